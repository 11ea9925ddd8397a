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

EAGLE-3 heads (`eagle3.py`, layout "eagle3") are saved in EAGLE-3's published layout: the
weights under their published names (fc, midlayer.*, norm, lm_head, d2t, t2d) and a 1-layer
`LlamaForCausalLMEagle3` draft config (`eagle3_config`) that vLLM and SGLang read; taps.json
records the three aux layers (HF hidden-state indices, 0 = embeddings).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from taps_ray.decoding.kv import cache_argument
from taps_ray.errors import TapsError

_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
LAYOUTS = ("taps", "eagle")  # EagleDrafter's; EAGLE-3 heads are layout "eagle3" (eagle3.py)
EAGLE3 = "eagle3"
EAGLE3_ARCH = "LlamaForCausalLMEagle3"  # vLLM and SGLang register this name for EAGLE-3 heads
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
    layout: str = "taps"  # taps | eagle (published EAGLE-1/2: no input/final norm) | eagle3
    aux_layers: list = field(default_factory=list)  # eagle3: the 3 target hidden-state indices
    # fc fuses (HF output_hidden_states index: 0 = embeddings, i = the input of layer i)
    extra: dict = field(default_factory=dict)  # training summary, averaging weights,
    # confidence_calibration (taps-ray drafter calibrate; absent = raw confidences),
    # routing_score (taps-ray drafter fit-router: route-learned), ...


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
        self.cache_arg = cache_argument(self.decoder)
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
            use_cache=past_key_values is not None,
            **{self.cache_arg: past_key_values},
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
    """A randomly initialised head: a valid drafter for tests and the lossless check
    (layout "eagle3": an Eagle3Drafter with the default aux layers)."""
    torch.manual_seed(seed)
    vocab = None
    if draft_vocab_size:
        vocab = torch.arange(min(draft_vocab_size, target.model.config.vocab_size))
    if layout == EAGLE3:
        from taps_ray.models.eagle3 import Eagle3Drafter

        drafter = Eagle3Drafter(target.model.config, vocab)
    else:
        drafter = EagleDrafter(target.model.config, vocab, layout)
    drafter = drafter.to(target.device, target.dtype)
    tokenizer = getattr(target, "tokenizer", None)
    drafter.meta = DrafterMeta(
        target=target.name,
        draft_vocab_size=draft_vocab_size,
        layout=layout,
        aux_layers=list(getattr(drafter, "aux_layers", ())),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer) if tokenizer is not None else "",
    )
    return drafter.eval().requires_grad_(False)


def save_drafter(drafter: EagleDrafter, path: str | Path, meta: DrafterMeta) -> Path:
    """Write config.json + model.safetensors + taps.json atomically (temp folder, then rename).

    taps.json records the drafter's own layout (and an EAGLE-3 head's draft vocabulary size and
    aux layers), whatever `meta` says."""
    from safetensors.torch import save_file

    meta = replace(meta, layout=drafter.layout)
    config = drafter.target_config.to_json_string()
    if drafter.layout == EAGLE3:
        meta = replace(meta, draft_vocab_size=drafter.draft_vocab_size,
                       aux_layers=list(drafter.aux_layers))
        config = json.dumps(eagle3_config(drafter), indent=2)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in drafter.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_FILE))
    (tmp / CONFIG_FILE).write_text(config)
    (tmp / META_FILE).write_text(json.dumps(asdict(meta), indent=2))
    if path.exists():
        _replace_dir(tmp, path)
    else:
        tmp.rename(path)
    return path


def eagle3_config(drafter: object) -> dict:
    """An EAGLE-3 head's config.json: the target's config as the 1-layer draft model vLLM and
    SGLang build (`LlamaForCausalLMEagle3`, draft_vocab_size, target_hidden_size, aux layer ids
    in vLLM's numbering = ours); target_num_hidden_layers lets `read_drafter` rebuild it."""
    config = drafter.target_config.to_dict()
    config.pop("layer_types", None)  # per target layer; the one draft layer is full attention
    config.update(
        architectures=[EAGLE3_ARCH],
        num_hidden_layers=1,
        tie_word_embeddings=False,  # SGLang would reuse embed_tokens as the LM head
        draft_vocab_size=drafter.draft_vocab_size,
        target_hidden_size=drafter.target_config.hidden_size,
        target_num_hidden_layers=drafter.target_config.num_hidden_layers,
        eagle_config={"eagle_aux_hidden_state_layer_ids": list(drafter.aux_layers),
                      "use_aux_hidden_state": True},
    )
    return config


def load_drafter(path: str | Path, target: object) -> EagleDrafter:
    """Load a saved drafter for `target`; a mismatched or damaged checkpoint is a user error."""
    path = _check_folder(path)
    meta = _read_meta(path / META_FILE)
    config = _read_config(path, meta)
    check_compatible(config, meta, target, path)
    _check_hidden_state_weights(meta, config.hidden_size, path)
    drafter = _build(path, config if meta.layout == EAGLE3 else target.model.config, meta)
    if meta.layout == EAGLE3:
        _check_aux_fits(drafter, target, path)
    return drafter.to(target.device, target.dtype).eval().requires_grad_(False)


def _check_hidden_state_weights(meta: DrafterMeta, hidden_size: int, path: Path) -> None:
    """A context calibration and a routing score read the head's hidden state: their weights
    must match it (found at load, not mid-routing)."""
    from taps_ray.decoding.calibration import calibration_of
    from taps_ray.decoding.router import routing_score_of

    calibration = calibration_of(meta)
    if calibration.method == "context" and len(calibration.trust_weights) != hidden_size:
        raise TapsError(f"drafter '{path}' has a context calibration of "
                        f"{len(calibration.trust_weights)} weights for a {hidden_size}-unit head; "
                        "rerun taps-ray drafter calibrate on it")
    routing = routing_score_of(meta)
    if routing is not None and len(routing.weights) != hidden_size:
        raise TapsError(f"drafter '{path}' has a routing score of {len(routing.weights)} "
                        f"weights for a {hidden_size}-unit head; rerun taps-ray drafter "
                        "fit-router on the heads it is routed with")


def read_drafter(path: str | Path) -> EagleDrafter:
    """A saved drafter on the CPU, built from its own config.json (no target needed: export)."""
    path = _check_folder(path)
    meta = _read_meta(path / META_FILE)
    return _build(path, _read_config(path, meta), meta).eval().requires_grad_(False)


def _read_config(path: Path, meta: DrafterMeta) -> object:
    """The folder's config.json; for EAGLE-3 the target's config again (its layer count back)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise TapsError(f"drafter config '{path / CONFIG_FILE}' is damaged ({err}); "
                        "retrain the drafter") from None
    if meta.layout != EAGLE3:
        return config
    layers = getattr(config, "target_num_hidden_layers", None)
    if not isinstance(layers, int) or layers < 1:
        raise TapsError(f"EAGLE-3 drafter config '{path / CONFIG_FILE}' lacks "
                        "target_num_hidden_layers; save the head again with taps-ray")
    config.num_hidden_layers = layers
    return config


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
    state = _load_state(path)
    if meta.layout == EAGLE3:
        drafter = _eagle3_head(state, config, meta, path)
    else:
        drafter = EagleDrafter(config, state.get("draft_vocab"), meta.layout)
    try:
        missing, unexpected = drafter.load_state_dict(state, strict=False)
    except RuntimeError:  # a shape that does not fit the config
        missing, unexpected = [], [_misshapen(drafter, state)]
    if missing or unexpected:
        raise TapsError(
            f"drafter weights in '{path}' do not match the head of layout '{meta.layout}' "
            f"({(missing or unexpected)[0]})"
        )
    drafter.meta = meta
    return drafter


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise TapsError(
            f"drafter weights '{path / WEIGHTS_FILE}' are corrupted ({err}); retrain it"
        ) from None


def _eagle3_head(state: dict, config: object, meta: DrafterMeta, path: Path) -> object:
    """An empty Eagle3Drafter for the saved d2t / aux layers; d2t and t2d must agree."""
    from taps_ray.models.eagle3 import Eagle3Drafter

    d2t = state.get("d2t")
    if d2t is None or d2t.dim() != 1:
        raise TapsError(f"EAGLE-3 drafter weights in '{path}' have no d2t draft-vocabulary map; "
                        "save the head again with taps-ray")
    ids = torch.arange(d2t.numel()) + d2t.long()
    if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise TapsError(f"EAGLE-3 drafter '{path}' has a d2t map whose target ids are not "
                        "increasing; save the head again with taps-ray")
    aux = meta.aux_layers or (getattr(config, "eagle_config", None) or {}).get(
        "eagle_aux_hidden_state_layer_ids")
    try:
        drafter = Eagle3Drafter(config, ids, tuple(aux) if aux else None)
    except TapsError as err:
        raise TapsError(f"EAGLE-3 drafter '{path}' is damaged: {err}") from None
    if "t2d" in state and not torch.equal(state["t2d"].bool(), drafter.t2d):
        raise TapsError(f"EAGLE-3 drafter '{path}' has t2d and d2t maps that disagree; "
                        "save the head again with taps-ray")
    return drafter


def _misshapen(drafter: nn.Module, state: dict) -> str:
    ours = drafter.state_dict()
    return next((f"{k} has shape {list(v.shape)}, expected {list(ours[k].shape)}"
                 for k, v in state.items() if k in ours and v.shape != ours[k].shape), "shapes")


def _check_aux_fits(drafter: object, target: object, path: Path) -> None:
    """An EAGLE-3 head reads three hidden states of the target: they must exist there."""
    from taps_ray.models.eagle3 import check_aux_layers

    layers = target.model.config.num_hidden_layers
    if drafter.target_config.num_hidden_layers != layers:
        raise TapsError(f"EAGLE-3 drafter '{path}' was built for a target of "
                        f"{drafter.target_config.num_hidden_layers} layers but target "
                        f"'{target.name}' has {layers}; train a drafter for this target")
    try:
        check_aux_layers(drafter.aux_layers, layers)
    except TapsError as err:
        raise TapsError(f"EAGLE-3 drafter '{path}' does not fit target '{target.name}': "
                        f"{err}") from None


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
    from taps_ray.decoding.router import routing_score_of

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
    try:
        routing_score_of(meta)
    except TapsError as err:
        raise TapsError(f"drafter metadata '{path}' has a damaged routing score ({err}); rerun "
                        "taps-ray drafter fit-router") from None
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
