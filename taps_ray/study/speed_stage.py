"""The quickstart's speed stage: choose the configuration to serve by tokens/s on this machine.

1. the machine's cost profile (`taps-ray calibrate`'s, reused when it exists for this hardware);
2. T = 0 replay of the specialists and prompt lookup over a grid of tree shapes;
3. predicted tokens/s of every (configuration, tree) from the profile, fastest first;
4. the top few and plain decoding decoded live, interleaved prompt by prompt, with the policy
   serving uses; the fastest live one becomes `best_config.yaml`, or plain decoding when nothing
   beats it (the file then says why).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from taps_ray.config.loader import from_dict
from taps_ray.config.schema import BenchConfig
from taps_ray.evaluation.speed_select import (
    Choice,
    choice_to_dict,
    choose_fastest,
    confirm_live,
    engine_strategy,
    grid_configs,
    rank_predicted,
)
from taps_ray.study.profiles import Profile

SPEED_METHOD = "hass"  # the specialists the speed stage ranks (HASS beats EAGLE-2 on tau)
GRID_RUN, LIVE_RUN = "speed-grid", "speed-live-t0"


def speed_drafters(out: Path) -> list[str]:
    folders = [str(out / "drafters" / f"{d}-{SPEED_METHOD}") for d in ("math", "chat")]
    return [*folders, "prompt-lookup"]


def ensure_profile(target, drafters: dict, quick: bool, log: Callable[[str], None],
                   quick_path: Path | None = None):
    """This machine's saved profile when it prices these drafters, else a fresh calibration.

    A quick calibration (smoke runs) is saved to `quick_path`, never over the machine's
    profile, which later runs trust."""
    from taps_ray.errors import TapsError
    from taps_ray.speed.calibrate import CalibrationSettings, calibrate
    from taps_ray.speed.profile import (
        default_profile_path,
        load_profile,
        machine_key,
        save_profile,
    )

    key = machine_key(target)
    path = quick_path if quick and quick_path else default_profile_path(key)
    if path.is_file():
        try:
            profile = load_profile(path, expect=key)
            if set(drafters) <= set(profile.draft_round_s):
                log(f"  cost profile reused: {path}")
                return profile
        except TapsError as err:
            log(f"  cost profile at {path} not usable ({err}); calibrating again")
    log("  calibrating this machine (T1, Tv(n), draft rounds; about a minute)")
    settings = CalibrationSettings.quick() if quick else CalibrationSettings()
    profile = calibrate(target, drafters, settings, key)
    save_profile(profile, path)
    log(f"  cost profile saved: {path} (T1 {profile.t1_s * 1000:.1f} ms)")
    return profile


def grid_bench(profile: Profile, out: Path) -> BenchConfig:
    return from_dict(BenchConfig, {
        "tree": asdict(profile.tree), "seed": profile.seed,
        "max_new_tokens": profile.max_new_tokens, "results_dir": str(out / "speed" / "grid"),
        "drafter_sets": {"speed": speed_drafters(out)}, "strategies": ["single", "merged/sum"],
        "benchmarks": list(profile.benchmarks), "replay_prompts_per_benchmark":
            profile.replay_prompts, "live_prompts_per_benchmark": 0, "run_id": GRID_RUN,
    })


def run_speed_stage(profile: Profile, out: Path, target,
                    log: Callable[[str], None]) -> tuple[dict, object]:
    """Returns (the best_config.yaml contents, the cost profile it was chosen on)."""
    from taps_ray.evaluation.bench import load_drafter_set, run_bench
    from taps_ray.evaluation.results import read_rows

    base = grid_bench(profile, out)
    drafters = load_drafter_set(base, "speed", target)
    cost = ensure_profile(target, drafters, profile.name == "smoke", log,
                          out / "speed" / "profile-quick.json")
    grid = grid_configs(base, profile.speed_trees)
    for i, cfg in enumerate(grid, 1):
        _, written = run_bench(cfg, lambda name: drafters, target, progress=False)
        log(f"  replay tree {i}/{len(grid)} ({cfg.tree.total_tokens}/{cfg.tree.depth}/"
            f"{cfg.tree.top_k}): {written} rows written")
    ranked = rank_predicted(read_rows([base.results_dir]), cost)
    top = ranked[: profile.speed_top]
    for c in ranked[: profile.speed_top + 2]:
        log(f"  predicted {c.predicted_speedup:.2f}x plain: {c.key} (mean tau {c.mean_tau:.2f})")
    rows = _live_rows(profile, out, target, drafters, top, cost, log)
    best, summary = choose_fastest(top, rows)
    log(f"  {summary['reason']}")
    return best_config(target, out, best, summary, cost), cost


def _live_rows(profile, out, target, drafters, top: list[Choice], cost, log):
    """Measured once: a rerun reads the finished unit back (resume)."""
    from taps_ray.data.mixture import benchmark_subset
    from taps_ray.data.records import turn_messages
    from taps_ray.data.render import render_prompt
    from taps_ray.evaluation.results import ResultRow, read_rows, result_exists, write_rows

    results = str(out / "results")
    if result_exists(results, LIVE_RUN, "speed-live"):
        frame = read_rows([str(out / "results" / LIVE_RUN)])
        rows = [ResultRow(**{k: v for k, v in r.items() if k in ResultRow.__dataclass_fields__})
                for r in frame.to_dict("records")]
        if {c.key for c in top} <= {r.strategy for r in rows}:
            log("  live speed rows measured already, reused")
            return rows

    prompts = {}
    for bench in profile.benchmarks:
        records = benchmark_subset(bench, profile.live_prompts, profile.seed)
        prompts[bench] = [(r.id, render_prompt(target.tokenizer, turn_messages(r, 0, [])))
                          for r in records]
    rows = confirm_live(target, drafters, top, prompts, profile.max_new_tokens, LIVE_RUN,
                        "adaptive", cost, log)
    write_rows(rows, results, LIVE_RUN, "speed-live", exact_name=True)
    return rows


def best_config(target, out: Path, best: Choice | None, summary: dict, cost) -> dict:
    """best_config.yaml: the fastest live configuration, or plain decoding with the reason."""
    from taps_ray.evaluation.speed_columns import profile_slug

    reason = f"{summary['reason']}; profile {profile_slug(cost)}"
    if best is None:
        return {"target": str(target.name), "drafters": [], "strategy": "plain",
                "metric": "live_speedup", "value": 1.0, "reason": reason}
    chosen = choice_to_dict(best)
    names = {Path(d).name: d for d in speed_drafters(out)}
    strategy, options = engine_strategy(best)
    return {
        "target": str(target.name), "drafters": [names[n] for n in chosen["drafters"]],
        "strategy": strategy, "strategy_options": options, "tree": chosen["tree"],
        "policy": "adaptive", "metric": "live_speedup",
        "value": summary["live_speedup"][best.key], "reason": reason,
    }
