"""One drafter from an ExperimentConfig: mixture -> rendered conversations -> target features
(cached or online; with the aux layers for EAGLE-3) -> draft vocabulary -> training ->
`<output_dir>/drafter`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from taps_ray.models.drafter import DrafterMeta
from taps_ray.training.examples import DataSpec, render_examples, require_assistant_tokens
from taps_ray.training.features import FeatureCache, FeatureSource, FeatureSpec, OnlineFeatures
from taps_ray.training.trainer import EpochHook, TrainResult, check_recipe, train_drafter
from taps_ray.training.vocab import build_draft_vocab, special_token_ids

_DOMAIN_OF_SOURCE = {"mathinstruct": "math", "sharegpt": "chat"}
EAGLE3_DRAFT_VOCAB = 8192  # EAGLE-3's draft vocabulary when drafter.draft_vocab_size is 0


def method_aux_layers(target: object, method: str) -> tuple[int, ...]:
    """The hidden-state indices the features of `method` carry: EAGLE-3's three, else none."""
    if method != "eagle3":
        return ()
    from taps_ray.models.eagle3 import default_aux_layers

    return default_aux_layers(int(target.model.config.num_hidden_layers))


def prepare_features(
    target: object,
    data: object,
    feature_dtype: str,
    online: bool = False,
    progress: bool = True,
    aux_layers: tuple[int, ...] = (),  # EAGLE-3: also store these hidden states
) -> tuple[FeatureSource, dict]:
    """The training features for `data` (a DataConfig) and the counts drawn per source.

    A finished cache is opened without drawing or rendering anything. Regenerated answers are
    cached on their own, so an EAGLE-3 cache of regenerated data costs one target forward.
    """
    spec = DataSpec.from_config(data)
    feature_spec = FeatureSpec.for_target(target, spec, feature_dtype, aux_layers)
    if not online:
        cache = FeatureCache.find(feature_spec)
        if cache is not None:
            return cache, cache.manifest["extra"].get("counts", {})
    records, drawn = spec.draw()
    if spec.regenerate:
        from taps_ray.training.regenerate import regenerate_records

        records = regenerate_records(target, records, spec.as_dict(),
                                     spec.regenerate_max_new_tokens,
                                     batch_size=data.regenerate_batch_size, progress=progress,
                                     max_prompt_tokens=data.max_length)
    examples, skipped = render_examples(target.tokenizer, records, data.max_length, progress)
    require_assistant_tokens(examples, spec)
    counts = {"drawn": drawn, "skipped_no_assistant": skipped,
              "conversations": len(examples)}
    if online:
        return OnlineFeatures(target, examples, feature_dtype, aux_layers=aux_layers), counts
    cache = FeatureCache.build(target, examples, feature_spec, extra={"counts": counts},
                               progress=progress)
    return cache, counts


def draft_vocab_for(
    target: object, source: FeatureSource, size: int, method: str = "eagle2"
) -> torch.Tensor | None:
    """None (full vocabulary) for size 0 or >= V; else the top-`size` ids of the data.
    EAGLE-3 always has its own reduced head: size 0 means 8192 (capped at V)."""
    vocab_size = int(target.model.config.vocab_size)
    if method == "eagle3" and size == 0:
        size = EAGLE3_DRAFT_VOCAB
    if size == 0 or size >= vocab_size:
        return None
    return build_draft_vocab(source.token_arrays(), size, vocab_size, special_token_ids(target))


def default_drafter_name(data: object, method: str) -> str:
    """<data>-<method>: math-eagle2, chat-hass, mix35k-hass (35k per source), mix3k-eagle2."""
    from taps_ray.data.mixture import largest_remainder, parse_mixture

    ratios = {k: v for k, v in parse_mixture(data.mixture).items() if v > 0}
    if len(ratios) == 1:
        return f"{_DOMAIN_OF_SOURCE.get(next(iter(ratios)), 'mix')}-{method}"
    counts = set(largest_remainder(ratios, data.total).values())
    size = counts.pop() if len(counts) == 1 else data.total
    return f"mix{_compact(size)}-{method}"


def train_from_config(
    cfg: object,  # ExperimentConfig
    *,
    target: object | None = None,
    resume: bool = False,
    online: bool = False,
    on_epoch_end: EpochHook | None = None,
    out_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train `cfg.drafter` on `cfg.data` against `cfg.target`; output in `out_dir` or
    `cfg.output_dir`."""
    from taps_ray.models.drafter import tokenizer_fingerprint
    from taps_ray.models.target import load_target

    if target is None:
        target = load_target(cfg.target.name, cfg.target.device, cfg.target.dtype)
    method = cfg.drafter.method
    check_recipe(cfg.training, method, target)  # before minutes of feature extraction
    source, counts = prepare_features(target, cfg.data, cfg.training.feature_dtype, online,
                                      progress, method_aux_layers(target, method))
    vocab = draft_vocab_for(target, source, cfg.drafter.draft_vocab_size, method)
    meta = DrafterMeta(
        name=cfg.drafter.name or default_drafter_name(cfg.data, cfg.drafter.method),
        method=cfg.drafter.method,
        layout=cfg.drafter.layout,
        target=str(target.name),
        tokenizer_fingerprint=tokenizer_fingerprint(target.tokenizer) if target.tokenizer else "",
        data={**DataSpec.from_config(cfg.data).as_dict(), "counts": counts},
    )
    return train_drafter(
        target, source, cfg.training, Path(out_dir or cfg.output_dir), method=cfg.drafter.method,
        meta=meta, draft_vocab=vocab, resume=resume, on_epoch_end=on_epoch_end,
        checkpoint_every=checkpoint_every, progress=progress,
    )


def _compact(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)
