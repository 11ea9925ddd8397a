"""The published EAGLE-3 checkpoint layout, and the vLLM / SGLang folders made from it.

Our Eagle3Drafter keeps the published names, so the mapping is the identity on weights:

    published key (EAGLE-3, SpecForge, vLLM, SGLang)    ours (Eagle3Drafter, layout "eagle3")
    fc.weight [d, 3d] (no bias)                         fc.weight
    midlayer.<param> (q/k/v read 2d; hidden_norm)       midlayer.<param>
    layers.0.<param> (vLLM's own name for the layer)    midlayer.<param>   (import only)
    -- (Llama-style layer, Qwen2 target)               midlayer.self_attn.{q,k,v}_proj.bias = 0
    norm.weight, lm_head.weight [V', d]                 norm.weight, lm_head.weight
    d2t [V'] (target id = i + d2t[i]), t2d [V] bool     d2t, t2d   (absent d2t: V' = V, identity)
    embed_tokens.weight                                 -- the target's own: shape-checked, dropped

Config: the target's config as one `LlamaForCausalLMEagle3` layer with draft_vocab_size and
target_hidden_size (`drafter.eagle3_config`). Aux layer ids (the three target hidden states fc
fuses) have two numberings: ours and vLLM's, id i = the hidden state entering layer i (0 = the
embeddings; both engines' default (2, L//2, L-3) is in it); SGLang's explicit ids name the output
of layer i (it captures before layer i + 1). So vLLM folders carry our ids, SGLang folders carry
none when they are the default (SGLang's own default then matches) and ours - 1 otherwise; the
taps_ray block of an exported config records ours, which import prefers.

Sources, read (not copied) to fix the names, shapes and numbering:
- vLLM `vllm/model_executor/models/llama_eagle3.py` @00bd149: fc = Linear(3 * target_hidden_size
  (else hidden_size), hidden_size, bias=False); `midlayer.` renamed to `layers.0.`; q/k/v read
  2 * hidden_size with bias = config.attention_bias; lm_head over config.draft_vocab_size; d2t
  loaded as draft_id_to_target_id (logits scattered to base + d2t), t2d skipped; embed_tokens
  skipped and shared with the target when absent; `eagle_config.use_aux_hidden_state`.
  `vllm/model_executor/models/registry.py`: LlamaForCausalLMEagle3 -> Eagle3LlamaForCausalLM.
  `vllm/v1/worker/gpu_model_runner.py` `_get_eagle3_aux_layers_from_config`: ids from the draft
  config's top-level `eagle_aux_hidden_state_layer_ids`, else `eagle_config[...]`.
- SGLang `python/sglang/srt/models/llama_eagle3.py` @03d5a77 (LlamaForCausalLMEagle3): fc bias =
  config.bias (default none), qkv without bias, `midlayer` (num_hidden_layers > 1 adds layers
  we do not build), lm_head over draft_vocab_size (None: the target's head), tie_word_embeddings
  makes embed_tokens the head, d2t -> hot_token_id, t2d skipped. `models/llama.py`
  `set_eagle3_layers_to_capture`: default [2, L//2, L-3] as capture-before indices, explicit
  ids + 1 (PR #25454 keeps the + 1 only when the first id is 1, which import follows).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.errors import TapsError
from taps_ray.models.drafter import DrafterMeta, eagle3_config
from taps_ray.models.eagle3 import Eagle3Drafter, default_aux_layers

_SHARED = "embed_tokens.weight"  # the target's input embedding: checked, never kept
_VLLM_LAYER = "layers.0."  # vLLM's internal name of the one layer, seen in converted files
_CHECKED_CONFIG = ("hidden_size", "vocab_size", "num_attention_heads", "num_key_value_heads",
                   "intermediate_size", "rms_norm_eps")


def is_eagle3_config(config: dict) -> bool:
    archs = " ".join(str(a) for a in config.get("architectures") or [])
    return "Eagle3" in archs or "draft_vocab_size" in config


# ---- import ---------------------------------------------------------------------------------


def import_eagle3(config: dict, state: dict[str, torch.Tensor], target_config: object, *,
                  source: str, target: str) -> Eagle3Drafter:
    """A published / exported EAGLE-3 folder's config and weights as an Eagle3Drafter."""
    _check_config(config, target_config, source, target)
    state = _our_names(state, target_config, source)
    ids, state = _draft_vocab(state, config, target_config, source)
    aux = import_aux_layers(config, target_config.num_hidden_layers, source)
    drafter = Eagle3Drafter(target_config, ids, aux)
    ours = drafter.state_dict()
    state = _zero_qkv_biases(state, ours)
    for key, value in state.items():
        if key not in ours:
            raise TapsError(f"{source} holds '{key}', which the EAGLE-3 head of a "
                            f"{target_config.model_type} target has not; import a head "
                            "trained for this target")
        if value.shape != ours[key].shape:
            raise TapsError(f"{source} has {key} of shape {list(value.shape)} but this "
                            f"target's EAGLE-3 head needs {list(ours[key].shape)}")
    missing = [k for k in ours if k not in state]
    if missing:
        raise TapsError(f"{source} is an EAGLE-3 head but lacks '{missing[0]}', which the head "
                        f"of a {target_config.model_type} target needs")
    drafter.load_state_dict(state)
    return drafter.eval().requires_grad_(False)


def _zero_qkv_biases(state: dict, ours: dict) -> dict:
    """Published heads for Qwen2 targets use Llama's layer (no q/k/v bias, both engines build
    it so); our Qwen2 layer with zero biases computes exactly that."""
    names = [f"midlayer.self_attn.{p}_proj.bias" for p in "qkv"]
    if all(n in ours and n not in state for n in names):
        state = {**state, **{n: torch.zeros_like(ours[n]) for n in names}}
    return state


def _check_config(config: dict, target_config: object, source: str, target: str) -> None:
    if config.get("num_hidden_layers", 1) != 1:
        raise TapsError(f"{source} has num_hidden_layers={config['num_hidden_layers']}; only "
                        "one-layer EAGLE-3 heads import")
    hidden = config.get("target_hidden_size", target_config.hidden_size)
    if hidden != target_config.hidden_size:
        raise TapsError(f"{source} has target_hidden_size={hidden} but target '{target}' has "
                        f"{target_config.hidden_size}; import a head trained for this target")
    for key in _CHECKED_CONFIG:
        want = getattr(target_config, key, None)
        got = config.get(key, want)
        if want is not None and got != want:
            raise TapsError(f"{source} has {key}={got} but target '{target}' has {want}; "
                            "import a head trained for this target")


def _our_names(state: dict, target_config: object, source: str) -> dict[str, torch.Tensor]:
    """Published names as ours: layers.0. -> midlayer., the shared embedding dropped."""
    out = {}
    for key, value in state.items():
        if key == _SHARED:
            want = [target_config.vocab_size, target_config.hidden_size]
            if list(value.shape) != want:
                raise TapsError(f"{source} has {key} of shape {list(value.shape)} but the "
                                f"target's is {want}; import a head trained for this target")
            continue
        if key.startswith(_VLLM_LAYER):
            key = "midlayer." + key[len(_VLLM_LAYER):]
        out[key] = value
    return out


def _draft_vocab(state: dict, config: dict, target_config: object, source: str):
    """(sorted target ids [V'], state with d2t / t2d / lm_head in that order)."""
    vocab = target_config.vocab_size
    size = int(config.get("draft_vocab_size") or vocab)
    d2t = state.get("d2t")
    if d2t is None:
        if size != vocab:
            raise TapsError(f"{source} has draft_vocab_size={size} but no d2t map; import a "
                            "head saved with its d2t")
        d2t = torch.zeros(vocab, dtype=torch.long)
    ids = torch.arange(d2t.numel()) + d2t.long()
    if d2t.dim() != 1 or ids.numel() != size or ids.unique().numel() != size or \
            int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise TapsError(f"{source} has a d2t map that is not {size} distinct target ids below "
                        f"{vocab}; import an undamaged head")
    order = ids.argsort()  # our head keeps the draft vocabulary sorted: permute its rows
    state = dict(state)
    if "lm_head.weight" in state and state["lm_head.weight"].shape[0] == size:
        state["lm_head.weight"] = state["lm_head.weight"][order]
    ids = ids[order]
    state["d2t"] = ids - torch.arange(size)
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[ids] = True
    if "t2d" in state and not torch.equal(state["t2d"].bool(), t2d):
        raise TapsError(f"{source} has t2d and d2t maps that disagree; import an undamaged head")
    state["t2d"] = t2d
    return ids, state


def import_aux_layers(config: dict, num_layers: int, source: str) -> tuple[int, int, int]:
    """Our aux layers of an EAGLE-3 config: the taps_ray block, else the engines' ids (SGLang's
    output-of-layer numbering when the first id is 1, as SGLang itself reads it), else default."""
    info = config.get("taps_ray") if isinstance(config.get("taps_ray"), dict) else {}
    nested = config.get("eagle_config") if isinstance(config.get("eagle_config"), dict) else {}
    ids = info.get("aux_layers")
    if not ids:
        ids = config.get("eagle_aux_hidden_state_layer_ids") or nested.get(
            "eagle_aux_hidden_state_layer_ids")
        if ids and int(ids[0]) == 1:
            ids = [int(i) + 1 for i in ids]
    if not ids:
        return default_aux_layers(num_layers)
    if len(ids) != 3 or not all(0 <= int(i) <= num_layers for i in ids):
        raise TapsError(f"{source} names aux layers {list(ids)}; a target of {num_layers} "
                        "layers needs 3 hidden-state indices in that range")
    return tuple(int(i) for i in ids)


# ---- export ---------------------------------------------------------------------------------


def engine_config(drafter: Eagle3Drafter, fmt: str, tree: TreeConfig) -> dict:
    """The draft config each engine reads (see the module docstring for the aux numbering)."""
    config = eagle3_config(drafter)
    aux, layers = list(drafter.aux_layers), drafter.target_config.num_hidden_layers
    if fmt == "vllm":
        config["eagle_aux_hidden_state_layer_ids"] = aux  # read before eagle_config's
        config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = aux
    elif aux == [2, layers // 2, layers - 3]:
        del config["eagle_config"]["eagle_aux_hidden_state_layer_ids"]  # SGLang's own default
    elif 0 in aux or layers in aux:
        raise TapsError(f"drafter '{_name(drafter)}' reads aux layers {aux}; SGLang captures the "
                        f"outputs of layers 0..{layers - 2} only (ids 1..{layers - 1} here), so "
                        "export it for vLLM or retrain with other aux layers")
    else:
        config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [i - 1 for i in aux]
    meta = getattr(drafter, "meta", None) or DrafterMeta()
    config["taps_ray"] = {"name": meta.name, "method": meta.method, "layout": "eagle3",
                          "aux_layers": aux, "tree": asdict(tree)}
    return config


def engine_notes(drafter: Eagle3Drafter, fmt: str) -> list[str]:
    """What differs between taps-ray's drafts and the engine's (outputs stay exact)."""
    layers = drafter.target_config.num_hidden_layers
    if fmt == "vllm" and layers in drafter.aux_layers:
        return [f"aux layer {layers} is the target's last hidden state after its final norm in "
                "taps-ray but before it in vLLM, so vLLM's drafts may differ (outputs stay "
                "exact)"]
    return []


def weights_file(drafter: Eagle3Drafter) -> bytes:
    """The state dict as is: both engines read these names (t2d is skipped by both)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in drafter.state_dict().items()}
    return save(state, metadata={"format": "pt"})


def config_file(drafter: Eagle3Drafter, fmt: str, tree: TreeConfig) -> bytes:
    return json.dumps(engine_config(drafter, fmt, tree), indent=2).encode()


def _name(drafter: object) -> str:
    return (getattr(drafter, "meta", None) or DrafterMeta()).name


def is_eagle3(drafter: object) -> bool:
    return getattr(drafter, "layout", "") == "eagle3"
