"""The drafter training loop: EAGLE-2 (teacher forced), HASS (plus top-K distillation and
harmonized context alignment, see alignment.py) and EAGLE-3 (training-time test over the head's
own outputs, see eagle3.py), with atomic checkpoints and exact resume.

Per step: fetch B conversations -> pairs -> J drafter passes (J = 1 for EAGLE-2), each pass's
loss backpropagated (EAGLE-3: one backward through all J steps) -> clip -> AdamW -> warmup +
cosine LR. Data order per epoch is seeded by
(seed, epoch), so a resumed run replays the same batches from where the checkpoint stopped.
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from taps_ray.errors import TapsError
from taps_ray.models.drafter import DrafterMeta, EagleDrafter, decoder_config, save_drafter
from taps_ray.models.eagle3 import Eagle3Drafter
from taps_ray.training.alignment import aligned_passes
from taps_ray.training.batching import PairBatch, batches_per_epoch, collate_pairs, epoch_batches
from taps_ray.training.checkpoint import (
    BEST_DIR,
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    publish_weights,
    save_checkpoint,
)
from taps_ray.training.eagle3 import target_probs, ttt_forward, ttt_losses
from taps_ray.training.features import FeatureSource
from taps_ray.training.losses import LossWeights, drafter_losses, target_side
from taps_ray.training.trainlog import CURVE_FILE, LOG_FILE, TrainLog, plot_loss_curve, read_log

METHODS = ("eagle2", "hass", "eagle3")
Drafter = EagleDrafter | Eagle3Drafter
EpochHook = Callable[[int, Drafter], "dict | None"]
_SUMMED = ("loss", "feature", "ce", "topk")
PLOT_EVERY_S = 60.0  # redraw loss_curve.png at an epoch end only if the last one is older


@dataclass
class TrainResult:
    drafter: Drafter  # the trained head (fp32, eval mode, on the target's device)
    path: Path | None  # <out>/drafter; None when stopped early by `stop_after`
    state: TrainState
    summary: dict  # also stored in the saved drafter's meta.extra["training"]


def train_drafter(
    target: object,
    source: FeatureSource,
    cfg: object,  # TrainingConfig
    out_dir: str | Path,
    *,
    method: str = "eagle2",
    meta: DrafterMeta | None = None,
    draft_vocab: torch.Tensor | None = None,  # [V'] sorted target ids, None = full vocabulary
    resume: bool = False,
    on_epoch_end: EpochHook | None = None,
    checkpoint_every: int = 0,  # optimizer steps between checkpoints (0: at epoch ends only)
    stop_after: int = 0,  # checkpoint and return after this many steps (0: run to the end)
    progress: bool = True,
) -> TrainResult:
    """Train one drafter on `source`; writes <out>/{drafter,checkpoints,train_log.jsonl,...}."""
    trainer = DrafterTrainer(target, source, cfg, method, Path(out_dir), meta, draft_vocab)
    return trainer.run(resume, on_epoch_end, checkpoint_every, stop_after, progress)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR factor for scheduler step s: linear warmup to 1, then cosine decay towards 0."""

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        progress = (s - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class DrafterTrainer:
    """One training run; `run` drives epochs, steps, hooks and checkpoints."""

    def __init__(self, target, source, cfg, method, out_dir: Path, meta, draft_vocab):
        _check_settings(cfg, method, source, target)
        self.target, self.source, self.cfg, self.method = target, source, cfg, method
        self.out_dir, self.device = out_dir, target.device
        self.lengths = source.lengths()
        self.indices = [i for i, n in enumerate(self.lengths) if n >= 3]  # >= 1 loss pair
        if not self.indices:
            raise TapsError("every training conversation is shorter than 3 tokens; raise "
                            "data.max_length")
        self.indices, self.val_indices = holdout_split(self.indices, cfg.holdout, cfg.seed)
        per_epoch = batches_per_epoch(len(self.indices), cfg.batch_size)
        self.total_steps = min(cfg.max_steps or 10**18, cfg.epochs * per_epoch)
        start = _saved_start(cfg.init_from, target, method, source) if cfg.init_from else None
        if start is not None:  # its LM-head rows belong to its own draft vocabulary
            draft_vocab = start.draft_vocab
        with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG left untouched
            torch.manual_seed(cfg.seed)
            self.drafter = _new_drafter(target, method, draft_vocab, meta, source)
        if start is not None:
            _load_start(self.drafter, start, cfg.init_from)
        self.drafter.to(self.device).train()
        self.embed = target.model.get_input_embeddings()
        self.head = _head_rows(self.drafter, target).detach().float()  # [V', d]
        self.weights = LossWeights.from_config(cfg, method)
        self.passes = cfg.align_steps if method in ("hass", "eagle3") else 1
        self.optimizer, self.scheduler = self._optimizer()
        self.meta = replace(meta or DrafterMeta(target=str(target.name)), method=method,
                            draft_vocab_size=self.drafter.draft_vocab_size)
        self.state = TrainState()
        self.autocast = self.device.type == "cuda"  # bf16 autocast on GPUs, fp32 on CPU
        self._plotted = time.monotonic()  # the curve is redrawn at epoch ends at most this often
        self._recent: deque[dict] = deque(maxlen=20)  # last step rows, for the summary

    def _optimizer(self):
        params = [p for p in self.drafter.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                betas=(0.9, 0.95))
        warmup = round(self.cfg.warmup_ratio * self.total_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(self.total_steps, warmup))
        return opt, sched

    @property
    def run_key(self) -> dict:
        key = {
            "method": self.method,
            "training": asdict(self.cfg),
            "draft_vocab_size": self.drafter.draft_vocab_size,
            "layout": self.drafter.layout,
            "conversations": len(self.indices),
            "total_steps": self.total_steps,
        }
        if self.method == "eagle3":  # only here: EAGLE-2 / HASS checkpoints keep their keys
            key["aux_layers"] = list(self.drafter.aux_layers)
        return key

    def run(self, resume, on_epoch_end, checkpoint_every, stop_after, progress) -> TrainResult:
        from tqdm import tqdm

        resumed = self._restore(resume)
        log = TrainLog(self.out_dir, self.state if resumed else None)
        self._recent.extend(r for r in log.kept if r.get("event") == "step")
        bar = tqdm(total=self.total_steps, initial=self.state.step, unit="step",
                   desc=f"train {self.method}", disable=not progress)
        try:
            while self.state.step < self.total_steps and self.state.epoch < self.cfg.epochs:
                if self._stalled():
                    break
                if self._run_epoch(log, bar, checkpoint_every, stop_after):
                    self._checkpoint()
                    return TrainResult(self.drafter.eval(), None, self.state, self._summary())
                self._end_epoch(log, on_epoch_end)
        finally:
            bar.close()
            log.close()
        return self._finish()

    def _restore(self, resume: bool) -> bool:
        folder = self.out_dir / "checkpoints"
        path = latest_checkpoint(folder) if resume else None
        if path is None:
            shutil.rmtree(folder, ignore_errors=True)  # a fresh run never mixes with an old one
            return False
        self.state = load_checkpoint(path, self.drafter, self.optimizer, self.scheduler,
                                     self.run_key)
        return True

    def _run_epoch(self, log: TrainLog, bar, checkpoint_every: int, stop_after: int) -> bool:
        """Train the rest of the current epoch; True when `stop_after` says stop now."""
        batches = epoch_batches(self.indices, self.lengths, self.cfg.batch_size, self.cfg.seed,
                                self.state.epoch)
        for b in range(self.state.batch, len(batches)):
            if self.state.step >= self.total_steps:
                break
            row = self._train_step(batches[b])
            self.state.batch = b + 1
            log.write(row)
            self._recent.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['acc']:.2f}",
                            tok_s=f"{row['tokens_per_s']:.0f}")
            if checkpoint_every and self.state.step % checkpoint_every == 0:
                self._checkpoint()
            if stop_after and self.state.step >= stop_after:
                return True
        return False

    def _train_step(self, indices: list[int]) -> dict:
        began = time.perf_counter()
        batch = self._batch(indices)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.zero_grad(set_to_none=True)
        parts = self._forward_backward(batch)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.drafter.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        seconds = time.perf_counter() - began
        self.state.step += 1
        self.state.tokens += batch.tokens
        self.state.seconds += seconds
        return {"event": "step", "step": self.state.step, "epoch": self.state.epoch, **parts,
                "lr": lr, "grad_norm": float(grad_norm), "tokens": batch.tokens,
                "tokens_per_s": batch.tokens / seconds}

    def _batch(self, indices: list[int]) -> PairBatch:
        """The conversations `indices` as one padded batch on the device (EAGLE-3 rows keep
        their aux layers after the final feature)."""
        final = self.source.hidden_size if self.method == "eagle3" else None
        return collate_pairs(self.source.fetch(indices), final).to(self.device)

    def _stalled(self) -> bool:
        """training.patience epochs have passed without a lower validation loss."""
        patience = self.cfg.patience
        return bool(patience) and self.state.epochs_without_gain >= patience

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        """The method's losses on the held-out conversations (token-weighted means)."""
        self.drafter.eval()
        sums: dict[str, float] = {}
        tokens = 0
        for indices in epoch_batches(self.val_indices, self.lengths, self.cfg.batch_size,
                                     self.cfg.seed, 0):
            batch = self._batch(indices)
            n = int(batch.loss_mask.sum())
            parts = self._forward_backward(batch, backward=False)
            for key in ("loss", "acc"):
                sums[key] = sums.get(key, 0.0) + parts[key] * n
            tokens += n
        self.drafter.train()
        return {f"val_{k}": round(v / max(tokens, 1), 5) for k, v in sums.items()}

    def _watch(self, metrics: dict) -> None:
        """Track the best validation loss; its weights go to checkpoints/best."""
        loss, state = metrics["val_loss"], self.state
        if state.best_val_loss is None or loss < state.best_val_loss:
            state.best_val_loss, state.best_epoch, state.epochs_without_gain = loss, \
                state.epoch - 1, 0
            publish_weights(self.drafter, self._final_meta(), self.out_dir / "checkpoints" /
                            BEST_DIR)
        else:
            state.epochs_without_gain += 1

    def _forward_backward(self, batch: PairBatch, backward: bool = True) -> dict[str, float]:
        """All passes of one batch; gradients accumulate, parts are summed over passes
        (`backward=False`: the losses only, under no_grad, for validation)."""
        if self.method == "eagle3":
            return self._ttt_forward_backward(batch, backward)
        sel = batch.loss_mask  # [B, P]
        topk = self.weights.topk if self.weights.w_topk else 0
        target = target_side(batch.target_features[sel], self.head, topk)
        embeds = self.embed(batch.next_ids).float()  # [B, P, d], frozen
        totals = dict.fromkeys(_SUMMED, 0.0)
        passes = aligned_passes(self.drafter, batch.features, embeds, self.passes, self.autocast)
        for j, pred in enumerate(passes):  # pred [B, P, d]
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                parts = drafter_losses(pred[sel], target, self.head, self.weights)
            if backward:
                parts["loss"].backward()
            for key in _SUMMED:
                totals[key] += float(parts[key].detach())
            totals["acc" if j == 0 else "acc_aligned"] = float(parts["acc"])
        return totals

    def _ttt_forward_backward(self, batch: PairBatch, backward: bool = True) -> dict[str, float]:
        """EAGLE-3: J unrolled steps, one backward; row keys loss, ce/acc (step 0), ce_k/acc_k."""
        probs = target_probs(batch.target_features[batch.loss_mask], self.head)  # [N, V']
        embeds = self.embed(batch.next_ids).float()  # [B, P, d], frozen
        outputs = ttt_forward(self.drafter, batch.features, embeds, self.passes, self.autocast)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            parts = ttt_losses(self.drafter, outputs, probs, batch.loss_mask)
        if backward:
            parts["loss"].backward()
        return {key.removesuffix("_0"): float(v.detach()) for key, v in parts.items()}

    def _end_epoch(self, log: TrainLog, on_epoch_end: EpochHook | None) -> None:
        """Checkpoint first (a hook may hand `<out>/checkpoints/last` to Ray Tune), then the
        hook; its metrics are logged and land in the next checkpoint."""
        epoch = self.state.epoch
        self.state.epoch, self.state.batch = epoch + 1, 0
        metrics = {}
        if self.val_indices:
            metrics = self._validate()
            self._watch(metrics)
        self._checkpoint()
        if on_epoch_end is not None:
            metrics.update(on_epoch_end(epoch, self._eval_copy()) or {})
        row = {"event": "epoch", "step": self.state.step, "epoch": epoch, **metrics}
        self.state.epoch_metrics.append(row)
        log.write(row)
        if time.monotonic() - self._plotted > PLOT_EVERY_S:
            self._plot()

    def _plot(self) -> None:
        plot_loss_curve(read_log(self.out_dir / LOG_FILE), self.out_dir / CURVE_FILE)
        self._plotted = time.monotonic()

    def _eval_copy(self) -> Drafter:
        """What hooks get: an eval-mode copy in the target's dtype (training state untouched)."""
        drafter = copy.deepcopy(self.drafter).to(self.target.dtype).eval().requires_grad_(False)
        drafter.meta = self._final_meta()
        return drafter

    def _checkpoint(self) -> None:
        save_checkpoint(self.out_dir / "checkpoints", self.drafter, self._final_meta(),
                        self.optimizer, self.scheduler, self.state, self.run_key)

    def _finish(self) -> TrainResult:
        if self.state.best_epoch is not None:  # the epoch with the lowest validation loss
            load_weights(self.out_dir / "checkpoints" / BEST_DIR, self.drafter)
        path = save_drafter(self.drafter, self.out_dir / "drafter", self._final_meta())
        self._plot()
        self.drafter.eval().requires_grad_(False)
        self.drafter.meta = self._final_meta()
        return TrainResult(self.drafter, path, self.state, self._summary())

    def _final_meta(self) -> DrafterMeta:
        extra = {**self.meta.extra, "training": self._summary()}
        return replace(self.meta, extra=extra)

    def _summary(self) -> dict:
        last = list(self._recent)
        return {
            "method": self.method,
            "steps": self.state.step,
            "total_steps": self.total_steps,
            "epochs_done": self.state.epoch,
            "conversations": len(self.indices),
            "tokens": self.state.tokens,
            "train_seconds": round(self.state.seconds, 2),
            "tokens_per_s": round(self.state.tokens / max(self.state.seconds, 1e-9), 1),
            "final_loss": sum(r["loss"] for r in last) / len(last) if last else None,
            "final_acc": sum(r["acc"] for r in last) / len(last) if last else None,
            "epoch_metrics": list(self.state.epoch_metrics),
            "config": asdict(self.cfg),
            **self._validation_summary(),
        }

    def _validation_summary(self) -> dict:
        if not self.val_indices:
            return {}
        state = self.state
        return {"validation": {
            "conversations": len(self.val_indices),
            "best_epoch": state.best_epoch, "best_val_loss": state.best_val_loss,
            "stopped_early": state.epoch < self.cfg.epochs and self._stalled(),
            "weights": "best epoch" if state.best_epoch is not None else "last",
        }}


def holdout_split(indices: list[int], share: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) conversations: a seeded `share` of them held out (at least one
    when share > 0; training keeps at least one)."""
    if share <= 0:
        return indices, []
    n = min(max(1, round(share * len(indices))), len(indices) - 1)
    if n < 1:
        raise TapsError("training.holdout needs at least 2 conversations; lower it to 0 or "
                        "add data")
    held = set(random.Random(f"holdout/{seed}").sample(indices, n))
    return [i for i in indices if i not in held], sorted(held)


def check_recipe(cfg, method: str, target) -> None:
    """Settings and target checks that need no features (run before any are extracted)."""
    if method not in METHODS:
        raise TapsError(f"drafter.method '{method}' is unknown; use one of {', '.join(METHODS)}")
    if cfg.epochs < 1:
        raise TapsError(f"training.epochs must be >= 1 (got {cfg.epochs}); use max_steps to cap")
    if cfg.max_steps < 0:
        raise TapsError(f"training.max_steps must be >= 0 (got {cfg.max_steps}); 0 = no cap")
    if method == "hass" and (cfg.align_steps < 1 or cfg.topk < 1):
        raise TapsError("training.align_steps and training.topk must be >= 1 for HASS")
    if method == "eagle3" and cfg.align_steps < 1:
        raise TapsError(f"training.align_steps (the EAGLE-3 training-time-test steps) must be "
                        f">= 1 (got {cfg.align_steps})")
    if not 0 <= cfg.warmup_ratio < 1:
        raise TapsError(f"training.warmup_ratio must be in [0, 1) (got {cfg.warmup_ratio})")
    if cfg.grad_clip <= 0:
        raise TapsError(f"training.grad_clip must be > 0 (got {cfg.grad_clip})")
    if not 0 <= cfg.holdout < 0.5:
        raise TapsError(f"training.holdout must be in [0, 0.5) (got {cfg.holdout}); 0.05 keeps "
                        "5 % of the conversations for the validation loss")
    if cfg.patience < 0 or (cfg.patience and not cfg.holdout):
        raise TapsError(f"training.patience {cfg.patience} needs a validation loss: set "
                        "training.holdout (e.g. 0.05), or patience 0 to run every epoch")
    if cfg.init_from and not (Path(cfg.init_from) / "taps.json").is_file():
        raise TapsError(f"training.init_from '{cfg.init_from}' is not a saved drafter (no "
                        "taps.json); point it at a drafter folder such as runs/<name>/drafter")
    decoder_config(target.model.config)  # an unsupported target family fails here, clearly


def _check_settings(cfg, method: str, source: FeatureSource, target) -> None:
    check_recipe(cfg, method, target)
    _check_aux(method, tuple(getattr(source, "aux_layers", ())))
    check_target = getattr(source, "check_target", None)  # a FeatureCache knows its target
    if check_target is not None:
        check_target(target)
    if source.hidden_size != target.model.config.hidden_size:
        raise TapsError(
            f"the features have hidden size {source.hidden_size} but target '{target.name}' has "
            f"{target.model.config.hidden_size}; build the feature cache for this target"
        )


def _check_aux(method: str, aux_layers: tuple[int, ...]) -> None:
    """EAGLE-3 reads [final | aux...] rows; EAGLE-2 / HASS read plain final features."""
    if method == "eagle3" and not aux_layers:
        raise TapsError("drafter.method eagle3 needs features with the target's aux layers; "
                        "prepare them with aux_layers (train_from_config does) or train online")
    if method != "eagle3" and aux_layers:
        raise TapsError(f"these features carry EAGLE-3 aux layers {list(aux_layers)}; train "
                        f"drafter.method {method} on features built without them")


def _new_drafter(target, method: str, draft_vocab, meta, source) -> Drafter:
    if method == "eagle3":
        return Eagle3Drafter(target.model.config, draft_vocab, tuple(source.aux_layers))
    return EagleDrafter(target.model.config, draft_vocab, _layout(meta))


def _saved_start(folder: str, target, method: str, source) -> Drafter:
    """training.init_from: the saved head a run starts from (same method, same aux layers)."""
    from taps_ray.models.drafter import load_drafter

    start = load_drafter(folder, target)
    if start.meta.method != method:
        raise TapsError(f"training.init_from '{folder}' is a {start.meta.method} head; train "
                        f"drafter.method {start.meta.method} from it, or start {method} from "
                        "scratch with init_from empty")
    aux = tuple(getattr(start, "aux_layers", ()))
    if method == "eagle3" and aux != tuple(source.aux_layers):
        raise TapsError(f"training.init_from '{folder}' reads target layers {list(aux)} but the "
                        f"features carry {list(source.aux_layers)}; build the features with "
                        "the saved head's aux layers")
    return start


def _load_start(drafter: Drafter, start: Drafter, folder: str) -> None:
    """Copy the saved head's weights into the new one (fresh optimizer and LR schedule)."""
    ours, theirs = drafter.state_dict(), start.state_dict()
    misfit = sorted(k for k in ours.keys() | theirs.keys()
                    if k not in ours or k not in theirs or ours[k].shape != theirs[k].shape)
    if misfit:
        raise TapsError(f"training.init_from '{folder}' does not fit this run's head "
                        f"({misfit[0]}: another drafter.layout or target); start from a head "
                        "of the same layout and target, or leave init_from empty")
    drafter.load_state_dict({k: v.to(ours[k].dtype) for k, v in theirs.items()})


def _head_rows(drafter: Drafter, target) -> torch.Tensor:  # [V', d]
    """The target's LM-head rows of the draft vocabulary (the target side of the losses)."""
    lm_head = target.model.get_output_embeddings().weight  # [V, d]
    if isinstance(drafter, Eagle3Drafter):
        return lm_head[drafter.draft_vocab]
    return drafter.head_weight(lm_head)


def _layout(meta: DrafterMeta | None) -> str:
    """The layout new heads are built in: the run's drafter.layout, carried in its meta."""
    return meta.layout if meta is not None else "taps"
