"""Benchmark matrix: drafter sets x strategies x benchmarks x temperatures -> result rows.

The matrix is cut into work units (one drafter set, one mode, one temperature, one benchmark).
Each unit writes its own exact-named Parquet file, so a rerun skips finished units (resume) and a
retried unit replaces its own file (no duplicated rows when a worker dies). T = 0 is measured by
replay on `replay_prompts_per_benchmark` prompts; live decoding (tokens/s, T > 0, and the plain
baseline) on the smaller `live_prompts_per_benchmark` subset.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from taps_ray.config.loader import to_dict
from taps_ray.config.schema import BenchConfig, TreeConfig
from taps_ray.data.mixture import benchmark_subset
from taps_ray.data.records import turn_messages, user_turns
from taps_ray.data.render import render_prompt
from taps_ray.decoding.engine import GenerationResult, SpeculativeEngine, generate_plain
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.errors import TapsError
from taps_ray.evaluation.results import ResultRow, route_counts_json, write_table
from taps_ray.evaluation.runner import Candidate

SET_KEY = "taps_drafter_set"  # a unit file's metadata: the set's entries when it was written
_LABEL = re.compile(r"^(?P<name>[a-z-]+)(?:/(?P<mode>[a-z]+))?(?:@(?P<w>[0-9.]+))?$")


@dataclass(frozen=True)
class BenchUnit:
    """One independent piece of the matrix; `key` names its result file."""

    drafter_set: str
    mode: str  # replay | live
    temperature: float
    benchmark: str

    @property
    def key(self) -> str:
        return f"{self.drafter_set}-{self.mode}-T{self.temperature:g}-{self.benchmark}"


def run_id_for(cfg: BenchConfig) -> str:
    """The config's own run id: the same config resumes into the same folder."""
    if cfg.run_id:
        return cfg.run_id
    blob = json.dumps(to_dict(cfg), sort_keys=True)
    return "bench-" + hashlib.sha256(blob.encode()).hexdigest()[:10]


def plan_units(cfg: BenchConfig) -> list[BenchUnit]:
    units = []
    for name in cfg.drafter_sets:
        for bench in cfg.benchmarks:
            if cfg.replay_prompts_per_benchmark >= 0:
                units.append(BenchUnit(name, "replay", 0.0, bench))
            if cfg.live_prompts_per_benchmark > 0:
                units += [BenchUnit(name, "live", t, bench) for t in cfg.live_temperatures]
    return units


def candidates_for(strategies: list[str], names: list[str], methods: dict[str, str]
                   ) -> list[Candidate]:
    """Row labels of one drafter set: `single` expands to one row per drafter."""
    method = _common_method([methods[n] for n in names])
    out: list[Candidate] = []
    for label in strategies:
        match = _LABEL.match(label)
        if not match:
            raise TapsError(f"strategy label '{label}' is malformed; write e.g. merged/sum, "
                            "route-confidence/prompt or average@0.25")
        name, mode, weight = match["name"], match["mode"], match["w"]
        if name == "single":
            out += [Candidate(n, "single", [n], method=methods[n]) for n in names]
            continue
        if len(names) < 2:
            raise TapsError(f"strategy '{label}' combines drafters; give its set 2 or more")
        options: dict = {}
        if name in ("route-confidence", "route-entropy", "route-learned"):
            options["granularity"] = mode or "step"
        elif name == "merged":
            options["budget"] = mode or "sum"
        elif mode:
            raise TapsError(f"strategy '{name}' takes no '/{mode}' suffix in '{label}'")
        if weight is not None:
            if name != "average" or len(names) != 2:
                raise TapsError(f"'@W' in '{label}' is the first drafter's weight when averaging "
                                "two drafters; use it with average and a set of two")
            w = float(weight)
            if not 0 <= w <= 1:
                raise TapsError(f"average weight in '{label}' must be in [0, 1]")
            options["weights"] = [w, 1 - w]
        budget = options.get("budget", "")
        out.append(Candidate(label, name, list(names), method, budget, options))
    return out


def run_unit(unit: BenchUnit, cfg: BenchConfig, target, drafters: dict, run_id: str,
             progress: bool = True) -> tuple[list[ResultRow], list[dict]]:
    """Rows (and per-token diagnostics, live only) of one unit; `drafters` maps name -> head."""
    from taps_ray.evaluation.replay import continuations
    from taps_ray.evaluation.runner import replay_candidates

    names = list(drafters)
    methods = {n: getattr(d.meta, "method", "none") for n, d in drafters.items()}
    cands = candidates_for(cfg.strategies, names, methods)
    if unit.mode == "replay":
        n = cfg.replay_prompts_per_benchmark or None
        records = benchmark_subset(unit.benchmark, n, cfg.seed)
        prompts = continuations(target, records, cfg.max_new_tokens, progress=False)
        rows = replay_candidates(target, drafters, cands, cfg.tree, prompts, run_id, progress)
        return [_tag(r, unit.drafter_set) for r in rows], []
    records = benchmark_subset(unit.benchmark, cfg.live_prompts_per_benchmark, cfg.seed)
    rows, diags = [], []
    if cfg.baseline and unit.drafter_set == next(iter(cfg.drafter_sets)):  # once, not per set
        base = Candidate("plain", "plain", [], "none")
        rows += _live(target, None, base, records, unit, cfg, run_id, diags, progress)
    for cand in cands:
        engine = SpeculativeEngine(target, [drafters[n] for n in cand.drafter_names], cfg.tree,
                                   cand.strategy, **(cand.options or {}))
        rows += _live(target, engine, cand, records, unit, cfg, run_id, diags, progress)
    rows = [_tag(r, unit.drafter_set) for r in rows]
    labels = {_untagged(r.strategy, unit.drafter_set): r.strategy for r in rows}
    for d in diags:
        d["strategy"] = labels.get(d["strategy"], d["strategy"])
    return rows, diags


def write_unit(cfg: BenchConfig, unit: BenchUnit, run_id: str, rows: list[ResultRow],
               diagnostics: list[dict]) -> str:
    """Diagnostics first, rows last: the rows file marks the unit finished."""
    from dataclasses import asdict

    if diagnostics:
        write_table(pa.Table.from_pylist(diagnostics), cfg.results_dir, run_id,
                    f"diagnostics-{unit.key}", exact_name=True)
    table = pa.Table.from_pylist([asdict(r) for r in rows])
    return write_table(table, cfg.results_dir, run_id, unit.key, exact_name=True,
                       metadata={SET_KEY: json.dumps(cfg.drafter_sets[unit.drafter_set])})


def unfinished_units(cfg: BenchConfig, run_id: str) -> list[BenchUnit]:
    """The units of `cfg` still to run. A finished unit whose drafter set has changed since its
    rows were written is an error, not skipped: its rows would be reported as the new set's."""
    from taps_ray.evaluation.results import result_exists, result_metadata

    todo = []
    for unit in plan_units(cfg):
        if not result_exists(cfg.results_dir, run_id, unit.key):
            todo.append(unit)
            continue
        recorded = result_metadata(cfg.results_dir, run_id, unit.key).get(SET_KEY)
        written = None if recorded is None else json.loads(recorded)  # None: an older file
        now = list(cfg.drafter_sets[unit.drafter_set])
        if written is not None and written != now:
            raise TapsError(
                f"drafter set '{unit.drafter_set}' of run '{run_id}' was {written} "
                f"when its rows were written and is {now} now; give the changed set a new name "
                "(or the run a new run_id) so both sets' rows stay true")
    return todo


def load_drafter_set(cfg, name: str, target) -> dict:
    """name -> drafter for one set. Entries are drafter folders, 'untrained' (a random head, for
    smoke runs) or 'prompt-lookup[:option=value,...]' (the n-gram drafter, no weights)."""
    from taps_ray.decoding.prompt_lookup import load_drafter_spec

    drafters = {}
    for k, spec in enumerate(cfg.drafter_sets[name]):
        drafter = load_drafter_spec(spec, target, seed=k)
        if drafter.meta.name in drafters:
            raise TapsError(f"drafter set '{name}' holds two drafters named "
                            f"'{drafter.meta.name}'; train them with distinct drafter.name")
        drafters[drafter.meta.name] = drafter
    return drafters


def run_bench(cfg: BenchConfig, load_drafters: Callable[[str], dict], target,
              progress: bool = True) -> tuple[str, int]:
    """Run every unfinished unit in process; returns (run_id, rows written)."""
    from tqdm import tqdm

    run_id = run_id_for(cfg)
    units = unfinished_units(cfg, run_id)
    written, loaded = 0, {}
    for unit in tqdm(units, desc="bench units", unit="unit", disable=not progress):
        if unit.drafter_set not in loaded:
            loaded = {unit.drafter_set: load_drafters(unit.drafter_set)}  # one set in memory
        rows, diags = run_unit(unit, cfg, target, loaded[unit.drafter_set], run_id, progress)
        write_unit(cfg, unit, run_id, rows, diags)
        written += len(rows)
    return run_id, written


def _live(target, engine, cand: Candidate, records, unit: BenchUnit, cfg: BenchConfig,
          run_id: str, diags: list[dict], progress: bool) -> list[ResultRow]:
    sampling = SamplingParams(temperature=unit.temperature)
    rows = []
    if progress:
        from tqdm import tqdm

        records = tqdm(records, desc=f"live {cand.label}", unit="prompt", leave=False)
    for index, record in enumerate(records):
        answers: list[str] = []
        for turn in range(len(user_turns(record))):
            prompt = render_prompt(target.tokenizer, turn_messages(record, turn, answers))
            seed = cfg.seed * 100_003 + index * 7 + turn
            if engine is None:
                result = generate_plain(target, prompt, sampling, cfg.max_new_tokens, seed=seed)
            else:
                result = engine.generate(prompt, sampling, cfg.max_new_tokens, seed=seed)
            answers.append(target.tokenizer.decode(result.tokens, skip_special_tokens=True))
            rows.append(live_row(run_id, target, cand, unit, record.id, turn, seed, result,
                                 cfg.tree))
            diags += _diagnostics(run_id, cand.label, unit, result)
    return rows


def live_row(run_id, target, cand: Candidate, unit: BenchUnit, prompt_id: str, turn: int,
             seed: int, result: GenerationResult, tree: TreeConfig) -> ResultRow:
    """The result row of one live decode of `cand` with `tree`; plain decoding has no steps."""
    steps = result.steps
    n = max(len(steps), 1)
    plain = not steps
    return ResultRow(
        run_id=run_id, target=str(target.name), drafters=list(cand.drafter_names),
        method=cand.method, strategy=cand.label, budget_mode=cand.budget_mode,
        benchmark=unit.benchmark, prompt_id=prompt_id, turn=turn, temperature=unit.temperature,
        seed=seed, new_tokens=result.new_tokens, steps=result.new_tokens if plain else len(steps),
        tau=1.0 if plain else result.tau, wall_s=result.wall_s, tokens_per_s=result.tokens_per_s,
        verify_tokens_per_step=1.0 if plain else sum(s.verify_tokens for s in steps) / n,
        accepted_by_depth=[] if plain else result.accepted_by_depth(tree.depth + 1),
        route_counts=route_counts_json([s.route for s in steps], list(cand.drafter_names))
        if not plain else "{}",
        total_tokens=tree.total_tokens, depth=tree.depth, top_k=tree.top_k,
        mode="live",
    )


def _diagnostics(run_id: str, label: str, unit: BenchUnit, result: GenerationResult
                 ) -> list[dict]:
    out = []
    base = {"run_id": run_id, "strategy": label, "benchmark": unit.benchmark,
            "temperature": unit.temperature}
    for s in result.steps:
        for kind in ("accepted", "rejected"):
            conf, ent = getattr(s, f"{kind}_confidence"), getattr(s, f"{kind}_entropy")
            out += [{**base, "kind": kind, "confidence": c, "entropy": e}
                    for c, e in zip(conf, ent, strict=True)]
    return out


def _tag(row: ResultRow, drafter_set: str) -> ResultRow:
    """Combination rows carry their set's name: the same strategy over two sets stays two rows."""
    if row.strategy not in row.drafters and row.strategy != "plain":
        row.strategy = f"{row.strategy} ({drafter_set})"
    return row


def _untagged(label: str, drafter_set: str) -> str:
    suffix = f" ({drafter_set})"
    return label[: -len(suffix)] if label.endswith(suffix) else label


def _common_method(methods: list[str]) -> str:
    kinds = set(methods)
    return kinds.pop() if len(kinds) == 1 else "mixed"
