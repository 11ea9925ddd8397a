"""Replay tau of a drafter after each training epoch: the one evaluator behind `taps-ray train`
(printed and logged with the epoch) and sweep trials (reported to Ray Tune)."""

from __future__ import annotations

from collections.abc import Callable


def replay_evaluator(
    target: object,
    cfg: object,  # ExperimentConfig: evaluation picks the prompts, tree the draft tree
    speed: tuple | None = None,  # (cost profile, drafter it prices the head as), or None
    progress: bool = True,
) -> Callable[[object], dict[str, float]]:
    """drafter -> {benchmark: pooled replay tau, "mean": their mean[, "predicted_speedup"]};
    the greedy continuations are generated (or read from their cache) once, here."""
    from taps_ray.evaluation.runner import replay_prompts, replay_rows

    prompts = replay_prompts(target, cfg.evaluation, progress=progress)
    return lambda drafter: epoch_metrics(replay_rows(target, drafter, cfg.tree, prompts), speed)


def epoch_metrics(rows, speed: tuple | None) -> dict[str, float]:
    """Replay taus per benchmark and "mean", plus "predicted_speedup" when priced."""
    from taps_ray.evaluation.runner import taus_of

    metrics = taus_of(rows)
    if speed is not None:
        from taps_ray.evaluation.speed_select import predicted_speedup

        metrics["predicted_speedup"] = round(predicted_speedup(rows, *speed), 4)
    return metrics
