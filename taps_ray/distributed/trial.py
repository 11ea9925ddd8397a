"""One sweep trial as a Tune function trainable, and the data preparation before the trials.

A trial trains in `<trial dir>/run` (the trial's local working folder). After every epoch the
trainer writes its atomic checkpoint (`run/checkpoints/last`, itself a loadable drafter folder),
then the epoch hook computes replay tau and hands that checkpoint to `tune.report`, which
copies it to the sweep's storage. A restarted or resumed trial gets it back through
`tune.get_checkpoint()` and the trainer continues from it (`resume=True`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from taps_ray.distributed.sweep import SweepConfig, data_specs, trial_config
from taps_ray.training.epoch_eval import replay_evaluator

__all__ = ["epoch_reporter", "prepare_data", "restore_checkpoint", "sweep_trial"]


def sweep_trial(config: dict, base: dict, speed: list[str] | None = None) -> None:
    """Tune trainable: train one drafter; report replay tau and a checkpoint every epoch.

    `speed`: [cost profile path, the profile's drafter pricing this head] adds the metric
    predicted_speedup (replay tau priced by the serving machine's profile)."""
    from taps_ray.models.target import load_target
    from taps_ray.training.pipeline import train_from_config

    cfg = trial_config(base, config)
    pricing = speed_pricing(speed)
    cfg.output_dir = str(trial_output_dir())
    resume = restore_checkpoint(Path(cfg.output_dir))
    target = load_target(cfg.target.name, cfg.target.device, cfg.target.dtype)
    evaluate = replay_evaluator(target, cfg, pricing, progress=False)  # prompts: prepare_data
    hook = epoch_reporter(evaluate, Path(cfg.output_dir))
    train_from_config(cfg, target=target, resume=resume, online=False, on_epoch_end=hook,
                      progress=False)


def speed_pricing(speed: list[str] | None):
    """(profile, drafter it prices trials as) when the sweep has a speed profile, else None."""
    if not speed:
        return None
    from taps_ray.speed.profile import load_profile

    path, cost_as = speed
    return load_profile(path), cost_as


def trial_output_dir() -> Path:
    from ray import tune

    return Path(tune.get_context().get_trial_dir()) / "run"


def restore_checkpoint(out: Path) -> bool:
    """Put the trial's last reported checkpoint (if any) where the trainer resumes from.

    Tune's copy is the authority: it is the one whose metrics Tune has, so the epoch count
    and the reported iterations stay in step even if a crash hit between the two.
    """
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    folder = out / "checkpoints"
    staging, last = folder / "from-tune.staging", folder / "last"
    shutil.rmtree(staging, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.to_directory(str(staging))
    shutil.rmtree(last, ignore_errors=True)
    staging.rename(last)
    return True


def epoch_reporter(evaluate, out: Path):
    """The trainer's on_epoch_end hook: metrics of `evaluate(drafter)` + the checkpoint the
    trainer has just written, reported to Tune (ASHA may stop the trial here)."""
    from ray import tune

    def hook(epoch: int, drafter) -> dict:
        taus = evaluate(drafter)
        speed = {k: taus.pop(k) for k in ("predicted_speedup",) if k in taus}
        metrics = {"epoch": epoch + 1, "mean_tau": taus.pop("mean"), **speed,
                   **{f"tau_{b}": v for b, v in taus.items()}, "drafter": drafter.meta.name}
        checkpoint = tune.Checkpoint.from_directory(str(out / "checkpoints" / "last"))
        tune.report(metrics, checkpoint=checkpoint)
        return metrics

    return hook


def prepare_data(cfg: SweepConfig) -> None:
    """Build each distinct data spec's feature cache once, in parallel Ray tasks placed like
    trials (so on a GPU cluster a GPU node computes them); the first task also caches the
    greedy continuations the trials replay. Trials then only open finished caches."""
    import ray

    from taps_ray.config.loader import to_dict
    from taps_ray.distributed.runtime import get

    resources = dict(cfg.resources_per_trial)
    options = {"num_cpus": resources.pop("CPU", 1), "num_gpus": resources.pop("GPU", 0),
               "resources": resources or None}
    task = ray.remote(_prepare_one).options(**options)
    specs = data_specs(cfg)
    get([task.remote(to_dict(spec), i == 0) for i, spec in enumerate(specs)])
    print(f"sweep: target features ready for {len(specs)} data spec(s)")


def _prepare_one(spec: dict, with_prompts: bool) -> None:
    from taps_ray.config.loader import from_dict
    from taps_ray.config.schema import ExperimentConfig
    from taps_ray.evaluation.runner import replay_prompts
    from taps_ray.models.target import load_target
    from taps_ray.training.pipeline import method_aux_layers, prepare_features

    cfg = from_dict(ExperimentConfig, spec)
    target = load_target(cfg.target.name, cfg.target.device, cfg.target.dtype)
    if with_prompts:
        replay_prompts(target, cfg.evaluation, progress=False)
    prepare_features(target, cfg.data, cfg.training.feature_dtype, online=False, progress=False,
                     aux_layers=method_aux_layers(target, cfg.drafter.method))

