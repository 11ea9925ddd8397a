"""Issue 14's figures: the configuration `best_config.yaml` chooses, served, against plain decoding
and transformers' generate() (with and without prompt lookup), on the four benchmarks; and the
cost model's predicted tokens/s against live tokens/s for fixed configurations.

Everything runs in one process, interleaved prompt by prompt (each prompt: every configuration
in turn), T = 0. Ratios are per benchmark, pooled over prompts (tokens / seconds).

    python benchmarks/speed_choice.py --best runs/quickstart/best_config.yaml \\
        --validate-drafter runs/quickstart/drafters/math-hass --prompts 8 --max-new-tokens 128 \\
        --out docs/bench/speed-choice.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.data.mixture import benchmark_subset
from taps_ray.data.records import turn_messages
from taps_ray.data.render import render_prompt
from taps_ray.decoding.adaptive import make_policy
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.prompt_lookup import load_drafter_spec
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.evaluation.speed_select import Choice, chain, engine_strategy
from taps_ray.models.target import load_target
from taps_ray.speed.predict import predicted_tokens_per_s
from taps_ray.speed.profile import default_profile_path, load_profile, machine_key

BENCHMARKS = ("mt_bench", "gsm8k", "math500", "svamp")
GREEDY = SamplingParams()


@dataclass
class Tally:
    """Pooled over prompts of one (configuration, benchmark)."""

    tokens: int = 0
    wall_s: float = 0.0
    steps: int = 0
    committed: int = 0
    verify_tokens: int = 0
    speculative_steps: int = 0
    mismatches: int = 0  # prompts whose tokens differ from taps-ray's plain decoding
    prompts: int = 0

    def add(self, tokens: list[int], wall: float, steps=(), reference: list[int] | None = None):
        self.tokens += len(tokens)
        self.wall_s += wall
        self.prompts += 1
        self.mismatches += int(reference is not None and tokens != reference)
        for s in steps:
            self.steps += 1
            self.committed += s.committed
            self.verify_tokens += s.verify_tokens
            self.speculative_steps += int(s.speculative)

    def summary(self) -> dict:
        out = asdict(self) | {"tokens_per_s": self.tokens / self.wall_s}
        if self.steps:
            out |= {"tau": self.committed / self.steps,
                    "verify_tokens_per_step": self.verify_tokens / self.steps,
                    "speculative_share": self.speculative_steps / self.steps}
        return out


@dataclass
class Config:
    name: str
    run: object  # callable(prompt ids) -> (tokens, steps)
    benchmarks: tuple[str, ...]
    predict: dict = field(default_factory=dict)  # drafters, strategy, tree (fixed configs)


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    target = load_target(args.target)
    key = machine_key(target)
    profile = load_profile(args.profile or default_profile_path(key), expect=key)
    configs = build_configs(args, target, profile)
    prompts = {b: [render_prompt(target.tokenizer, turn_messages(r, 0, []))
                   for r in benchmark_subset(b, args.prompts, seed=args.seed)]
               for b in BENCHMARKS}
    tallies = {c.name: {b: Tally() for b in c.benchmarks} for c in configs}
    warm_up(configs, prompts["gsm8k"][0])
    for bench, items in prompts.items():
        for i, ids in enumerate(items):
            reference = None
            for c in configs:
                if bench not in c.benchmarks:
                    continue
                start = time.perf_counter()
                tokens, steps = c.run(ids)
                wall = time.perf_counter() - start
                if c.name == "taps plain":
                    reference = tokens
                tallies[c.name][bench].add(tokens, wall, steps, reference)
            print(f"{bench} {i + 1}/{len(items)} done", flush=True)
    report = summarize(args, target, profile, configs, tallies)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.rename(out)
    print(markdown(report))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--best", required=True, help="best_config.yaml the quickstart chose")
    p.add_argument("--validate-drafter", required=True,
                   help="drafter folder for the fixed configurations of the prediction check")
    p.add_argument("--validate-benchmark", default="gsm8k")
    p.add_argument("--profile", default=None, help="cost profile (default: this machine's)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per benchmark")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="docs/bench/speed-choice.json")
    return p.parse_args()


def build_configs(args, target, profile) -> list[Config]:
    import yaml

    n, every = args.max_new_tokens, BENCHMARKS

    def hf(**extra):
        def run(ids):
            x = torch.tensor([ids])
            out = target.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                        do_sample=False, **extra)
            return out[0, len(ids):].tolist(), []
        return run

    def engine_run(engine):
        def run(ids):
            result = engine.generate(ids, GREEDY, n)
            return result.tokens, result.steps
        return run

    configs = [
        Config("generate()", hf(), every),
        Config("generate(prompt_lookup_num_tokens=10)", hf(prompt_lookup_num_tokens=10), every),
        Config("taps plain", lambda ids: (generate_plain(target, ids, GREEDY, n).tokens, []),
               every),
    ]
    best = yaml.safe_load(Path(args.best).read_text())
    if best["strategy"] in ("plain", "none"):
        configs.append(Config("served (best_config: plain)", configs[2].run, every))
    else:
        drafters = [load_drafter_spec(d, target) for d in best["drafters"]]
        engine = SpeculativeEngine(target, drafters, TreeConfig(**best["tree"]),
                                   best["strategy"], **best.get("strategy_options", {}))
        configs.append(Config("served (best_config)", served_run(engine, best, profile, n),
                              every))
    head = load_drafter_spec(args.validate_drafter, target)
    lookup = load_drafter_spec("prompt-lookup", target)
    fixed = [([head], "single", chain(1)), ([head], "single", chain(3)),
             ([head], "single", TreeConfig(8, 3, 2)), ([head], "single", TreeConfig(20, 4, 5)),
             ([head], "single", TreeConfig(60, 5, 10)), ([lookup], "single", TreeConfig(10, 1, 1)),
             ([head, lookup], "merged/sum", TreeConfig(8, 3, 2))]
    for drafters, label, tree in fixed:
        names = [d.meta.name for d in drafters]
        kind, options = engine_strategy(Choice(label, tuple(names), label, tree))
        engine = SpeculativeEngine(target, drafters, tree, kind, policy=make_policy("fixed"),
                                   **options)
        tag = f"{label} {'+'.join(names)} {tree.total_tokens}/{tree.depth}/{tree.top_k} (fixed)"
        configs.append(Config(tag, engine_run(engine), (args.validate_benchmark,),
                              {"drafters": names, "strategy": label, "tree": tree}))
    return configs


def served_run(engine, best: dict, profile, max_new: int):
    """As `taps-ray serve` decodes: a fresh speed policy per request whose guard starts from
    the plain speed the previous request measured (taps_ray/serving/service.py)."""
    plain_rate = [None]

    def run(ids):
        engine.policy = make_policy(best.get("policy", "adaptive"), profile)
        guard = getattr(engine.policy, "guard", None)
        if guard is not None and plain_rate[0]:
            guard.plain_rate = plain_rate[0]
        result = engine.generate(ids, GREEDY, max_new)
        if guard is not None and guard.plain_rate:
            plain_rate[0] = guard.plain_rate
        return result.tokens, result.steps
    return run


def warm_up(configs: list[Config], ids) -> None:
    for c in configs:
        c.run(ids[:64])


def summarize(args, target, profile, configs, tallies) -> dict:
    rows = {}
    for c in configs:
        for bench, tally in tallies[c.name].items():
            rows.setdefault(c.name, {})[bench] = tally.summary()
    ratios = {}
    for c in configs:
        for bench, s in rows[c.name].items():
            plain = rows["taps plain"][bench]["tokens_per_s"]
            hf = rows["generate()"][bench]["tokens_per_s"]
            hf_pl = rows["generate(prompt_lookup_num_tokens=10)"][bench]["tokens_per_s"]
            ratios.setdefault(c.name, {})[bench] = {
                "vs_taps_plain": s["tokens_per_s"] / plain, "vs_generate": s["tokens_per_s"] / hf,
                "vs_generate_prompt_lookup": s["tokens_per_s"] / hf_pl}
    validation = {}
    for c in configs:
        if not c.predict:
            continue
        s = rows[c.name][args.validate_benchmark]
        pred = predicted_tokens_per_s(profile, s["tau"], c.predict["drafters"],
                                      c.predict["strategy"], c.predict["tree"],
                                      s["verify_tokens_per_step"])
        validation[c.name] = {"live_tokens_per_s": s["tokens_per_s"], "tau": s["tau"],
                              "verify_tokens_per_step": s["verify_tokens_per_step"],
                              "predicted_tokens_per_s": pred,
                              "error": pred / s["tokens_per_s"] - 1}
    return {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "dtype": str(target.dtype), "kernels": target.kernels},
        "setup": vars(args), "profile": str(profile.key), "t1_s": profile.t1_s,
        "results": rows, "ratios": ratios, "validation": validation,
    }


def markdown(r: dict) -> str:
    lines = ["| configuration | benchmark | tokens/s | tau | x taps plain | x generate() | "
             "x generate(PL=10) | not equal to plain |", "| --- |" + " --- |" * 7]
    for name, per in r["results"].items():
        for bench, s in per.items():
            x = r["ratios"][name][bench]
            lines.append(f"| {name} | {bench} | {s['tokens_per_s']:.2f} | "
                         f"{s.get('tau', 1.0):.2f} | {x['vs_taps_plain']:.2f} | "
                         f"{x['vs_generate']:.2f} | {x['vs_generate_prompt_lookup']:.2f} | "
                         f"{s['mismatches']}/{s['prompts']} |")
    lines += ["", "| fixed configuration | tau | verify tokens/step | live tokens/s | "
              "predicted tokens/s | error |", "| --- |" + " --- |" * 5]
    for name, v in r["validation"].items():
        lines.append(f"| {name} | {v['tau']:.2f} | {v['verify_tokens_per_step']:.1f} | "
                     f"{v['live_tokens_per_s']:.2f} | {v['predicted_tokens_per_s']:.2f} | "
                     f"{v['error']:+.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
