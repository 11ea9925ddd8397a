"""Atomic training checkpoints: `<out>/checkpoints/last/` is a loadable drafter folder
(`save_drafter`) that also holds `trainer_state.pt` (optimizer, scheduler, position in the data).

Writing: the checkpoint is assembled in `last.staging/` (drafter via `save_drafter`, state via
tmp + rename), then swapped in: `last` -> `last.old`, `last.staging` -> `last`, drop `last.old`.
A kill at any point leaves either `last` or `last.old` complete; loading prefers `last`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from taps_ray.errors import TapsError
from taps_ray.models.drafter import WEIGHTS_FILE, DrafterMeta, EagleDrafter, save_drafter

STATE_FILE = "trainer_state.pt"
BEST_DIR = "best"  # <out>/checkpoints/best: the weights of the lowest validation loss


@dataclass
class TrainState:
    """Where training stands; restored exactly on resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch: int = 0  # batches of `epoch` already done
    tokens: int = 0  # drafter pairs trained on so far
    seconds: float = 0.0  # training wall time so far (excludes hooks and checkpoints)
    epoch_metrics: list[dict] = field(default_factory=list)  # what on_epoch_end returned
    best_val_loss: float | None = None  # lowest validation loss so far (training.holdout > 0)
    best_epoch: int | None = None  # the epoch that reached it: its weights are checkpoints/best
    epochs_without_gain: int = 0  # epochs since then (training.patience stops at that many)


def save_checkpoint(
    folder: Path,  # <out>/checkpoints
    drafter: EagleDrafter,
    meta: DrafterMeta,
    optimizer: torch.optim.Optimizer,
    scheduler: object,
    state: TrainState,
    run_key: dict,  # settings a resumed run must share (method, config, data size, ...)
) -> Path:
    staging, last, old = folder / "last.staging", folder / "last", folder / "last.old"
    shutil.rmtree(staging, ignore_errors=True)
    save_drafter(drafter, staging, meta)
    payload = {
        "state": asdict(state),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "run_key": run_key,
    }
    tmp = staging / (STATE_FILE + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, staging / STATE_FILE)
    shutil.rmtree(old, ignore_errors=True)
    if last.exists():
        last.rename(old)
    staging.rename(last)
    shutil.rmtree(old, ignore_errors=True)
    return last


def publish_weights(drafter: EagleDrafter, meta: DrafterMeta, dest: Path) -> None:
    """Save `drafter` as a loadable folder at `dest`: whole or absent (via `<dest>.staging`)."""
    _publish(dest, lambda staging: save_drafter(drafter, staging, meta))


def publish_folder(source: Path, dest: Path) -> None:
    """Copy a finished drafter folder to `dest`: whole or absent (via `<dest>.staging`)."""
    _publish(dest, lambda staging: shutil.copytree(source, staging))


def _publish(dest: Path, write: Callable[[Path], object]) -> None:
    """`write` fills `<dest>.staging`, which then replaces `dest` by a rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(dest.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)


def latest_checkpoint(folder: Path) -> Path | None:
    """`last`, or `last.old` when a kill hit between the two renames; None when neither."""
    for name in ("last", "last.old"):
        if (folder / name / STATE_FILE).is_file():
            return folder / name
    return None


def load_checkpoint(
    path: Path,
    drafter: EagleDrafter,
    optimizer: torch.optim.Optimizer,
    scheduler: object,
    run_key: dict,
) -> TrainState:
    """Restore weights, optimizer, scheduler and position; damaged or foreign -> TapsError."""
    payload = _load_payload(path)
    _check_run_key(path, payload.get("run_key", {}), run_key)  # settings first: clearer error
    load_weights(path, drafter)
    try:
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        return TrainState(**payload["state"])
    except (KeyError, TypeError, ValueError) as err:
        raise _damaged(path / STATE_FILE, err) from None


def load_weights(path: Path, drafter: EagleDrafter) -> None:
    """The weights of the drafter folder `path` into `drafter` (damaged -> TapsError)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path / WEIGHTS_FILE))
        drafter.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise _damaged(path / WEIGHTS_FILE, err) from None


def _load_payload(path: Path) -> dict:
    try:
        payload = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, ...: all mean a damaged file
        raise _damaged(path / STATE_FILE, err) from None
    if not isinstance(payload, dict):
        raise _damaged(path / STATE_FILE, "not a trainer state")
    return payload


# run-key entries newer than some checkpoints: what an older checkpoint was written with
_RUN_KEY_DEFAULTS = {"layout": "taps"}


def _check_run_key(path: Path, saved: dict, current: dict) -> None:
    for key, value in current.items():
        if saved.get(key, _RUN_KEY_DEFAULTS.get(key)) != value:
            raise TapsError(
                f"checkpoint '{path}' was written with "
                f"{key}={saved.get(key, _RUN_KEY_DEFAULTS.get(key))!r} but this run has "
                f"{value!r}; resume with the same settings or train without resume"
            )


def _damaged(path: Path, err: object) -> TapsError:
    short = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
    return TapsError(
        f"checkpoint file '{path}' is truncated or corrupted ({short}); train without resume "
        f"(or delete '{path.parent}')"
    )
