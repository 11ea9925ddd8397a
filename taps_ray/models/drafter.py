"""The EAGLE-2 draft head and its on-disk format.

    input  = concat(embed(x_{t+1}), f_t)          # [B, T, 2d], embed = the target's (frozen)
    h      = fc(input)                             # [B, T, d]
    f^_t+1 = decoder(h)                            # one decoder layer of the target's family
    logits = lm_head(f^_t+1)                       # the target's LM head (frozen), maybe row-sliced

Only `fc` and the decoder are trained and saved. The embedding and LM head stay in the target and
are passed in at call time, so they are shared, never copied.

Two layouts of the decoder, recorded in taps.json (`layout`; files without it are "taps"):
- "taps": the layer keeps its input RMSNorm and a final norm follows it;
- "eagle": the published EAGLE-1/2 layout (EAGLE `eagle/model/cnets1.py`, inherited by HASS and
  the TAPS study): layer 0 has no input norm and no final norm follows, so the target's LM head
  reads the layer's output. vLLM and SGLang load this one (see `eagle_format.py`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from taps_ray.errors import TapsError

_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
LAYOUTS = ("taps", "eagle")
CONFIG_FILE, WEIGHTS_FILE, META_FILE = "config.json", "model.safetensors", "taps.json"


@dataclass
class DrafterMeta:
    """What a drafter was trained for: written to taps.json beside the weights."""

    name: str = "untrained"  # <data>-<method>, e.g. math-eagle2
    method: str = "none"  # eagle2 | hass | none (untrained)
    target: str = ""  # target alias / id the head was trained against
    tokenizer_fingerprint: str = ""  # sha256 of the target vocabulary
    data: dict = field(default_factory=dict)  # mixture spec and exact counts drawn
    draft_vocab_size: int = 0  # 0 = full vocabulary
    layout: str = "taps"  # taps | eagle (published EAGLE-1/2: no input/final norm); see LAYOUTS
    extra: dict = field(default_factory=dict)  # training summary, averaging weights,
    # confidence_calibration (taps-ray drafter calibrate; absent = raw confidences), ...


def decoder_config(target_config: object) -> object:
    """Config of a 1-layer model of the target's family (no vocab: embeddings are the target's)."""
    family = getattr(target_config, "model_type", "")
    if family not in _FAMILIES:
        raise TapsError(
            f"target model_type '{family}' is not supported by the drafter; "
            f"supported families: {', '.join(_FAMILIES)}"
        )
    cfg = copy.deepcopy(target_config)
    cfg.num_hidden_layers = 1
    cfg.vocab_size = 1  # the decoder never embeds tokens: inputs come through `fc`
    cfg.pad_token_id = None
    cfg.tie_word_embeddings = False
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = ["full_attention"]
    cfg.use_sliding_window = False
    cfg._attn_implementation = "sdpa"
    return cfg


class EagleDrafter(nn.Module):
    """EAGLE-2 head built from a target config; optional reduced draft vocabulary."""

    def __init__(
        self,
        target_config: object,
        draft_vocab: torch.Tensor | None = None,
        layout: str = "taps",  # see LAYOUTS
    ):
        super().__init__()
        from transformers import AutoModel

        if layout not in LAYOUTS:
            raise TapsError(
                f"drafter layout '{layout}' is unknown; use one of {', '.join(LAYOUTS)}"
            )
        hidden = target_config.hidden_size
        self.target_config = target_config
        self.layout = layout
        self.fc = nn.Linear(2 * hidden, hidden, bias=True)
        self.decoder = AutoModel.from_config(decoder_config(target_config))
        if layout == "eagle":
            _drop_published_norms(self.decoder)
        # [N] long: draft-vocab index -> target token id (None: full vocabulary)
        self.register_buffer("draft_vocab", draft_vocab, persistent=draft_vocab is not None)

    @property
    def draft_vocab_size(self) -> int:
        return 0 if self.draft_vocab is None else int(self.draft_vocab.numel())

    def forward(
        self,
        features: torch.Tensor,  # [B, T, d] target (or predicted) features at t
        token_embeds: torch.Tensor,  # [B, T, d] embeddings of x_{t+1}
        attention_mask: torch.Tensor | None = None,  # [B, 1, T, past+T] additive, or None=causal
        position_ids: torch.Tensor | None = None,  # [B, T]
        past_key_values: object | None = None,  # transformers Cache of this head
    ) -> torch.Tensor:  # [B, T, d] predicted features at t+1
        hidden = self.fc(torch.cat([token_embeds, features], dim=-1))
        out = self.decoder(
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
        )
        return out.last_hidden_state

    def head_weight(self, lm_head_weight: torch.Tensor) -> torch.Tensor:
        """[V', d] rows of the target LM head this drafter scores (all, or the draft vocab)."""
        if self.draft_vocab is None:
            return lm_head_weight
        return lm_head_weight.index_select(0, self.draft_vocab.to(lm_head_weight.device))

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Map draft-vocab indices to target token ids."""
        return draft_ids if self.draft_vocab is None else self.draft_vocab[draft_ids]


def _drop_published_norms(decoder: nn.Module) -> None:
    """EAGLE-1/2 skip layer 0's input norm and have no final norm (cnets1.py): with both as
    identity the HF decoder still runs through its own public forward, unpatched."""
    decoder.norm = nn.Identity()
    decoder.layers[0].input_layernorm = nn.Identity()


def tokenizer_fingerprint(tokenizer: object) -> str:
    """Stable hash of a tokenizer's vocabulary: drafters refuse targets with another one."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def untrained_drafter(
    target: object, seed: int = 0, draft_vocab_size: int = 0, layout: str = "taps"
) -> EagleDrafter:
    """A randomly initialised head: a valid drafter for tests and the lossless check."""
    torch.manual_seed(seed)
    vocab = None
    if draft_vocab_size:
        vocab = torch.arange(min(draft_vocab_size, target.model.config.vocab_size))
    drafter = EagleDrafter(target.model.config, vocab, layout).to(target.device, target.dtype)
    tokenizer = getattr(target, "tokenizer", None)
    drafter.meta = DrafterMeta(
        target=target.name,
        draft_vocab_size=draft_vocab_size,
        layout=layout,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer) if tokenizer is not None else "",
    )
    return drafter.eval().requires_grad_(False)


def save_drafter(drafter: EagleDrafter, path: str | Path, meta: DrafterMeta) -> Path:
    """Write config.json + model.safetensors + taps.json atomically (temp folder, then rename).

    taps.json records the drafter's own layout, whatever `meta` says."""
    from safetensors.torch import save_file

    meta = replace(meta, layout=drafter.layout)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in drafter.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_FILE))
    (tmp / CONFIG_FILE).write_text(drafter.target_config.to_json_string())
    (tmp / META_FILE).write_text(json.dumps(asdict(meta), indent=2))
    if path.exists():
        _replace_dir(tmp, path)
    else:
        tmp.rename(path)
    return path


def load_drafter(path: str | Path, target: object) -> EagleDrafter:
    """Load a saved drafter for `target`; a mismatched or damaged checkpoint is a user error."""
    from transformers import AutoConfig

    path = _check_folder(path)
    meta = _read_meta(path / META_FILE)
    check_compatible(AutoConfig.from_pretrained(path), meta, target, path)
    drafter = _build(path, target.model.config, meta)
    return drafter.to(target.device, target.dtype).eval().requires_grad_(False)


def read_drafter(path: str | Path) -> EagleDrafter:
    """A saved drafter on the CPU, built from its own config.json (no target needed: export)."""
    from transformers import AutoConfig

    path = _check_folder(path)
    meta = _read_meta(path / META_FILE)
    return _build(path, AutoConfig.from_pretrained(path), meta).eval().requires_grad_(False)


def _check_folder(path: str | Path) -> Path:
    path = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE, META_FILE):
        if not (path / name).is_file():
            raise TapsError(
                f"drafter folder '{path}' has no {name}; pass a folder written by taps-ray train"
            )
    return path


def _build(path: Path, config: object, meta: DrafterMeta) -> EagleDrafter:
    """The head of `meta.layout` over `config` with the weights in `path` (strictly matched)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise TapsError(
            f"drafter weights '{path / WEIGHTS_FILE}' are corrupted ({err}); retrain it"
        ) from None
    drafter = EagleDrafter(config, state.get("draft_vocab"), meta.layout)
    missing, unexpected = drafter.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TapsError(
            f"drafter weights in '{path}' do not match the head of layout '{meta.layout}' "
            f"({(missing or unexpected)[0]})"
        )
    drafter.meta = meta
    return drafter


def check_compatible(config: object, meta: DrafterMeta, target: object, path: Path) -> None:
    tcfg = target.model.config
    for key in ("hidden_size", "vocab_size", "model_type"):
        if getattr(config, key, None) != getattr(tcfg, key, None):
            raise TapsError(
                f"drafter '{path}' was built for {key}={getattr(config, key, None)} but target "
                f"'{target.name}' has {getattr(tcfg, key, None)}; train a drafter for this target"
            )
    if target.tokenizer is None or not meta.tokenizer_fingerprint:
        return  # tokenizer-less test targets and untrained heads carry no fingerprint
    if meta.tokenizer_fingerprint != tokenizer_fingerprint(target.tokenizer):
        raise TapsError(
            f"drafter '{path}' was trained with another tokenizer than target '{target.name}'; "
            "train a drafter for this target"
        )


def _read_meta(path: Path) -> DrafterMeta:
    from taps_ray.decoding.calibration import calibration_of

    try:
        meta = DrafterMeta(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise TapsError(
            f"drafter metadata '{path}' is damaged ({err}); retrain the drafter"
        ) from None
    try:  # a damaged confidence calibration fails at load, not mid-routing
        calibration_of(meta)
    except TapsError as err:
        raise TapsError(f"drafter metadata '{path}' has a damaged confidence calibration "
                        f"({err}); rerun taps-ray drafter calibrate") from None
    return meta


def read_meta(path: str | Path) -> DrafterMeta:
    """The taps.json of a drafter folder (weights not read)."""
    return _read_meta(_check_folder(path) / META_FILE)


def write_meta(path: str | Path, meta: DrafterMeta) -> Path:
    """Rewrite only a drafter folder's taps.json (temp file, then rename; the weights are
    untouched): metadata added after training, e.g. a confidence calibration."""
    import os

    target = _check_folder(path) / META_FILE
    tmp = target.with_name(f".{META_FILE}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(asdict(meta), indent=2))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _replace_dir(new: Path, old: Path) -> None:
    import shutil

    trash = old.with_name(old.name + ".old")
    shutil.rmtree(trash, ignore_errors=True)
    old.rename(trash)
    new.rename(old)
    shutil.rmtree(trash, ignore_errors=True)
