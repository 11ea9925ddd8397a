"""A sweep trial on a tiny random target and synthetic conversations (seconds per trial), with
the real trial plumbing: checkpoint restore, replay tau, `tune.report` with the checkpoint.

Each start appends `<trial id> <resumed>` to `<base.output_dir>/starts.log`; when the file
`<base.output_dir>/crash-once` exists, the first trial to finish an epoch deletes it and dies
right after reporting, so Tune restarts it from that checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

from taps_ray.data.render import RenderedExample
from taps_ray.distributed.sweep import trial_config
from taps_ray.distributed.trial import epoch_reporter, restore_checkpoint, trial_output_dir
from taps_ray.evaluation.runner import replay_taus


def tiny_trial(config: dict, base: dict) -> None:
    import torch
    from ray import tune

    from taps_ray.decoding.engine import generate_plain
    from taps_ray.decoding.sampling import SamplingParams
    from taps_ray.evaluation.replay import ReplayPrompt
    from taps_ray.training.examples import DataSpec
    from taps_ray.training.features import FeatureCache, FeatureSpec
    from taps_ray.training.trainer import train_drafter
    from tests.tiny import tiny_target

    torch.set_num_threads(1)
    cfg = trial_config(base, config)
    shared, out = Path(cfg.output_dir), trial_output_dir()
    resumed = restore_checkpoint(out)
    with open(shared / "starts.log", "a") as log:
        log.write(f"{tune.get_context().get_trial_id()} {int(resumed)}\n")
    target = tiny_target("llama")
    examples = _examples()
    spec = FeatureSpec.for_target(target, DataSpec("synthetic", len(examples), 0, 64), "fp32")
    source = FeatureCache.build(target, examples, spec, root=out / "features", progress=False)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    cont = generate_plain(target, prompt, SamplingParams(), 12).tokens
    prompts = [ReplayPrompt("gsm8k", "p0", 0, prompt, cont)]
    report = epoch_reporter(lambda d: replay_taus(target, d, cfg.tree, prompts), out)

    def hook(epoch: int, drafter) -> dict:
        metrics = report(epoch, drafter)
        marker = shared / "crash-once"
        if marker.exists():
            marker.unlink()
            os._exit(1)  # dies after its checkpoint was reported, like a lost node
        return metrics

    train_drafter(target, source, cfg.training, out, method=cfg.drafter.method, resume=resumed,
                  on_epoch_end=hook, progress=False)


def _examples(n: int = 8) -> list[RenderedExample]:
    out = []
    for k in range(n):
        ids = [(k + i) % 8 + 1 for i in range(20 + 3 * k)]
        prompt = len(ids) // 3
        out.append(RenderedExample(ids, [0] * prompt + [1] * (len(ids) - prompt)))
    return out
