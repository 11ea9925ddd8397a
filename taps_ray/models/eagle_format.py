"""The published EAGLE-1/2 checkpoint layout, and the vLLM / SGLang folders made from it.

EAGLE-3 heads (layout "eagle3") have their own mapping in `eagle3_format.py`; import and export
here pick it by the checkpoint's config (LlamaForCausalLMEagle3 / draft_vocab_size) or the
drafter's layout.

    published key (EAGLE, HASS, vLLM, SGLang)   ours (EagleDrafter, layout "eagle")
    fc.weight, fc.bias                          fc.weight, fc.bias   (no bias in the file: zero)
    layers.0.<param>                            decoder.layers.0.<param>
    layers.0.input_layernorm.weight             -- (older EAGLE files; layer 0 never reads it)
    embed_tokens.weight, lm_head.weight         -- the target's own: shape-checked, not kept

Sources, read (not copied) to fix the names and shapes:
- EAGLE `eagle/model/cnets1.py` @2174a79: fc = Linear(2d, d, bias=True) over
  cat(embed(x_{t+1}), f_t); `layers` of LlamaDecoderLayer, layer 0 without input_layernorm;
  no final norm; the target's LM head reads the layer output.
- vLLM `vllm/model_executor/models/llama_eagle.py` @00da923 (V1 EagleLlamaForCausalLM): reads
  fc.weight and layers.0.*; fc is built with bias=False, so an fc.bias in the file is skipped;
  embed_tokens is skipped and shared with the target; config = a Llama config, 1 layer, whose
  LlamaForCausalLM `vllm/transformers_utils/configs/eagle.py` (EAGLEConfig) maps to
  EagleLlamaForCausalLM.
- SGLang `python/sglang/srt/models/llama_eagle.py` @034b3be (LlamaForCausalLMEagle): fc with a
  bias (so fc.bias must be in the file); layer 0's input_layernorm deleted; and
  `speculative/spec_utils.py` `load_token_map`: torch.load of the hot token ids, whose rows of
  the target's LM head become the draft head (= our reduced draft vocabulary).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.errors import TapsError
from taps_ray.models.drafter import DrafterMeta, EagleDrafter

FORMATS = ("vllm", "sglang")
ENGINE_FAMILIES = ("llama",)  # both engines load EAGLE-1/2 heads through llama_eagle.py
TOKEN_MAP_FILE = "token_map.pt"  # SGLang --speculative-token-map (reduced draft vocabulary)
WEIGHTS, CONFIG = "model.safetensors", "config.json"
_OURS, _PUBLISHED = "decoder.layers.0.", "layers.0."
_SHARED = ("embed_tokens.weight", "lm_head.weight")  # the target's; checked, never kept
_SKIPPED = ("layers.0.input_layernorm.weight",)  # present in older EAGLE files, unused
_DUMMY = "decoder.embed_tokens.weight"  # the 1-row embedding of our decoder: never read
_CHECKED_CONFIG = ("hidden_size", "vocab_size", "num_attention_heads", "num_key_value_heads",
                   "intermediate_size", "rms_norm_eps")


# ---- key mapping ---------------------------------------------------------------------------


def published_key(ours: str) -> str | None:
    """Published name of one of our weight names (None: not part of the published head)."""
    if ours.startswith("fc."):
        return ours
    if ours.startswith(_OURS):
        return _PUBLISHED + ours[len(_OURS):]
    return None


def our_key(published: str) -> str | None:
    """Our weight name of a published one (None: the published layout has no such weight)."""
    if published.startswith("fc."):
        return published
    if published.startswith(_PUBLISHED):
        return _OURS + published[len(_PUBLISHED):]
    return None


def published_state(drafter: EagleDrafter) -> dict[str, torch.Tensor]:
    """fc.* and layers.0.* under their published names (CPU, contiguous)."""
    if drafter.layout != "eagle":
        raise TapsError(
            f"drafter '{_name(drafter)}' is in the '{drafter.layout}' layout (input and final "
            "norms), which EAGLE engines cannot load; retrain it with drafter.layout=eagle"
        )
    out = {}
    for key, value in drafter.state_dict().items():
        name = published_key(key)
        if name is not None:
            out[name] = value.detach().cpu().contiguous()
    return out


def drafter_from_published(
    state: dict[str, torch.Tensor],
    target_config: object,
    draft_vocab: torch.Tensor | None = None,  # [V'] target ids, None = full vocabulary
    source: str = "the checkpoint",
) -> EagleDrafter:
    """An "eagle"-layout head holding `state`; any key or shape that does not fit is refused."""
    drafter = EagleDrafter(target_config, draft_vocab, layout="eagle")
    ours = drafter.state_dict()
    _check_shared(state, target_config, source)
    mapped = {}
    for key, value in state.items():
        if key in _SHARED or key in _SKIPPED:
            continue
        name = our_key(key)
        if name is None or name not in ours:
            raise TapsError(
                f"{source} holds '{key}', which the EAGLE-1/2 layout of a "
                f"{target_config.model_type} target has not; only EAGLE-1/2 and HASS heads "
                "import under an EAGLE-1/2 config (EAGLE-3 heads need their "
                "LlamaForCausalLMEagle3 config)"
            )
        _check_shape(key, value, ours[name], source)
        mapped[name] = value
    if "fc.weight" in mapped and "fc.bias" not in mapped:
        mapped["fc.bias"] = torch.zeros_like(ours["fc.bias"])  # saved without a bias
    trained = [k for k in ours if k not in ("draft_vocab", _DUMMY)]
    missing = [k for k in trained if k not in mapped]
    if missing:
        raise TapsError(
            f"{source} lacks '{published_key(missing[0])}', which the drafter layer of a "
            f"{target_config.model_type} target needs; import a head trained for this target"
        )
    mapped[_DUMMY] = torch.zeros_like(ours[_DUMMY])
    drafter.load_state_dict(mapped, strict=False)
    return drafter.eval().requires_grad_(False)


def _check_shared(state: dict, target_config: object, source: str) -> None:
    want = [target_config.vocab_size, target_config.hidden_size]
    for key in _SHARED:
        if key in state and list(state[key].shape) != want:
            raise TapsError(
                f"{source} has {key} of shape {list(state[key].shape)} but the target's is "
                f"{want}; import a head trained for this target"
            )


def _check_shape(key: str, value: torch.Tensor, ours: torch.Tensor, source: str) -> None:
    if value.shape != ours.shape:
        raise TapsError(
            f"{source} has {key} of shape {list(value.shape)} but this target's drafter needs "
            f"{list(ours.shape)}; import a head trained for this target"
        )


# ---- reading published checkpoints ----------------------------------------------------------


def read_published(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor | None]:
    """(config.json, weights, token map or None) of an EAGLE / HASS / exported folder or file."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise TapsError(f"checkpoint '{path}' does not exist; pass an EAGLE or HASS folder")
    if (folder / "taps.json").is_file():
        raise TapsError(f"'{folder}' is a taps-ray drafter already; use it as it is")
    files = [path] if path.is_file() else _weight_files(folder)
    config = _read_config(folder)
    state = {}
    for file in files:
        state.update(_load_weights(file))
    return config, state, _read_token_map(folder, config)


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise TapsError(
            f"'{folder}' has no pytorch_model.bin or *.safetensors; pass an EAGLE or HASS "
            "checkpoint folder"
        )
    return files


def _read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / CONFIG).read_text())
    except FileNotFoundError:
        raise TapsError(f"'{folder}' has no config.json; EAGLE and HASS save one beside the "
                        "weights: copy it there") from None
    except json.JSONDecodeError as err:
        raise TapsError(f"'{folder / CONFIG}' is not valid JSON ({err}); fix the file") from None
    if not isinstance(config, dict):
        raise TapsError(f"'{folder / CONFIG}' is not a JSON object; fix the file")
    return config


def _load_weights(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad header, pickled code: all a damaged file here
        raise TapsError(f"weights '{file}' cannot be read ({type(err).__name__}); "
                        "download them again") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise TapsError(f"weights '{file}' are not a state dict of tensors; pass the head's "
                        "weights file")
    return state


def _read_token_map(folder: Path, config: dict) -> torch.Tensor | None:
    file = folder / TOKEN_MAP_FILE
    if not file.is_file():
        return None
    ids = torch.as_tensor(torch.load(file, map_location="cpu", weights_only=True)).long()
    vocab = int(config.get("vocab_size", 0))
    if ids.dim() != 1 or ids.numel() == 0 or ids.unique().numel() != ids.numel() or (
        vocab and (ids.min() < 0 or ids.max() >= vocab)
    ):
        raise TapsError(f"token map '{file}' must be distinct token ids below {vocab}; fix it")
    return ids


def check_published_config(config: dict, target_config: object, source: str, target: str) -> None:
    """EAGLE-1/2 configs describe one Llama-style layer of the target: refuse what differs."""
    if config.get("num_hidden_layers", 1) != 1:
        raise TapsError(f"{source} has num_hidden_layers={config['num_hidden_layers']}; an "
                        "EAGLE-1/2 head has 1 layer")
    for key in _CHECKED_CONFIG:
        want = getattr(target_config, key, None)
        got = config.get(key, want)
        if want is not None and got != want:
            raise TapsError(
                f"{source} has {key}={got} but target '{target}' has {want}; import a head "
                "trained for this target"
            )


def import_published(
    path: str | Path,
    target_config: object,
    *,
    target: str,  # the target's alias / id, recorded in taps.json
    fingerprint: str = "",  # tokenizer fingerprint of the target ("" when it has none)
    name: str = "",
    method: str = "",
) -> EagleDrafter:
    """An EAGLE / HASS / EAGLE-3 / exported checkpoint as a drafter with its meta (layout
    "eagle", or "eagle3" when its config is an EAGLE-3 one)."""
    from taps_ray.models import eagle3_format

    config, state, token_map = read_published(path)
    source = f"checkpoint '{path}'"
    if eagle3_format.is_eagle3_config(config):
        drafter = eagle3_format.import_eagle3(config, state, target_config, source=source,
                                              target=target)
    else:
        check_published_config(config, target_config, source, target)
        drafter = drafter_from_published(state, target_config, token_map, source)
    info = config.get("taps_ray") if isinstance(config.get("taps_ray"), dict) else {}
    extra = {"imported_from": str(path)}
    if isinstance(info.get("tree"), dict):
        extra["tree"] = info["tree"]
    drafter.meta = DrafterMeta(
        name=name or info.get("name") or Path(path).name,
        method=method or info.get("method") or ("eagle3" if drafter.layout == "eagle3"
                                                else "eagle2"),
        target=target,
        tokenizer_fingerprint=fingerprint,
        draft_vocab_size=drafter.draft_vocab_size,
        layout=drafter.layout,
        aux_layers=list(getattr(drafter, "aux_layers", ())),
        extra=extra,
    )
    return drafter


# ---- exporting for engines ------------------------------------------------------------------


def engine_state(drafter: EagleDrafter, fmt: str) -> dict[str, torch.Tensor]:
    """Published weights as each engine's loader reads them.

    vLLM builds fc without a bias and skips fc.bias, so a zero bias is left out (and a nonzero
    one kept for other readers, see `engine_notes`); SGLang's fc has a bias it must be given.
    """
    state = published_state(drafter)
    if fmt == "vllm" and not state["fc.bias"].any():
        del state["fc.bias"]
    return state


def engine_config(drafter: EagleDrafter, fmt: str, tree: TreeConfig) -> dict:
    """The target's config as a 1-layer head (target's max_position_embeddings kept)."""
    from taps_ray.models import eagle3_format

    check_engine_family(drafter)
    if eagle3_format.is_eagle3(drafter):
        return with_rope_theta(eagle3_format.engine_config(drafter, fmt, tree))
    config = drafter.target_config.to_dict()
    config["num_hidden_layers"] = 1
    config["tie_word_embeddings"] = False
    if fmt == "sglang":
        config["architectures"] = ["LlamaForCausalLMEagle"]
    else:
        config["architectures"] = config.get("architectures") or ["LlamaForCausalLM"]
    meta = getattr(drafter, "meta", None) or DrafterMeta()
    config["taps_ray"] = {"name": meta.name, "method": meta.method, "layout": "eagle",
                          "tree": asdict(tree)}
    return with_rope_theta(config)


def check_engine_family(drafter: EagleDrafter) -> None:
    family = getattr(drafter.target_config, "model_type", "")
    if family not in ENGINE_FAMILIES:
        raise TapsError(
            f"vLLM and SGLang load EAGLE heads for Llama-family targets only (their "
            f"llama_eagle.py / llama_eagle3.py); this drafter's target is '{family}'"
        )


def with_rope_theta(config: dict) -> dict:
    """transformers 5 writes rope_parameters only; engines on transformers 4 read rope_theta
    (default 10000: a wrong rotation for most targets), so write both."""
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return config


def engine_notes(drafter: EagleDrafter, fmt: str) -> list[str]:
    """What differs between taps-ray's drafts and the engine's (outputs stay exact)."""
    from taps_ray.models import eagle3_format

    if eagle3_format.is_eagle3(drafter):
        return eagle3_format.engine_notes(drafter, fmt)
    notes = []
    if fmt == "vllm" and bool(drafter.fc.bias.detach().any()):
        notes.append(
            "vLLM's EAGLE loader builds fc without a bias and skips fc.bias, so its drafts differ "
            "slightly from taps-ray's (outputs stay exact; acceptance may be lower)"
        )
    if fmt == "vllm" and drafter.draft_vocab is not None:
        notes.append(
            f"vLLM scores the full vocabulary, not this drafter's {drafter.draft_vocab_size} "
            "draft tokens, so its drafts may differ (outputs stay exact)"
        )
    return notes


def sglang_flags(tree: TreeConfig) -> dict[str, int]:
    """Our tree in SGLang's terms: it counts the root among draft tokens and levels as steps.

    Ours: top-k children of the root, then `depth` expansions (depth + 1 levels), keeping
    `total_tokens` nodes besides the root.
    """
    return {
        "--speculative-num-steps": tree.depth + 1,
        "--speculative-eagle-topk": tree.top_k,
        "--speculative-num-draft-tokens": tree.total_tokens + 1,
    }


def vllm_speculative_config(out: Path, tree: TreeConfig, method: str = "eagle") -> dict:
    """vLLM drafts a chain: one token per level of our tree (method eagle or eagle3)."""
    return {"method": method, "model": str(out), "num_speculative_tokens": tree.depth + 1}


def export_folder(
    drafter: EagleDrafter, fmt: str, out: str | Path, *, tree: TreeConfig, served_target: str
) -> Path:
    """Write an engine folder (weights, config, token map, README, Serve LLM app) atomically."""
    from safetensors.torch import save

    if fmt not in FORMATS:
        raise TapsError(f"export format '{fmt}' is unknown; use one of {', '.join(FORMATS)}")
    out = Path(out).absolute()
    eagle3 = getattr(drafter, "layout", "") == "eagle3"
    if eagle3:  # published names as they are; d2t carries the draft vocabulary to both engines
        from taps_ray.models.eagle3_format import weights_file

        files = {WEIGHTS: weights_file(drafter)}
    else:
        files = {WEIGHTS: save(engine_state(drafter, fmt), metadata={"format": "pt"})}
    files[CONFIG] = json.dumps(engine_config(drafter, fmt, tree), indent=2).encode()
    if drafter.draft_vocab is not None and not eagle3:  # SGLang reads it; import restores it
        buffer = io.BytesIO()
        torch.save(drafter.draft_vocab.detach().cpu().long(), buffer)
        files[TOKEN_MAP_FILE] = buffer.getvalue()
    if fmt == "vllm":
        from taps_ray.serving.vllm_app import serve_yaml

        files["serve_llm.yaml"] = serve_yaml(served_target, out, tree, _name(drafter),
                                             method=_vllm_method(drafter)).encode()
    files["README.md"] = launch_readme(drafter, fmt, out, tree, served_target).encode()
    write_folder(out, files)
    return out


def _vllm_method(drafter: EagleDrafter) -> str:
    return "eagle3" if getattr(drafter, "layout", "") == "eagle3" else "eagle"


def launch_readme(
    drafter: EagleDrafter, fmt: str, out: Path, tree: TreeConfig, served_target: str
) -> str:
    """The exact launch commands for this folder (values from the drafter's tree)."""
    eagle3 = _vllm_method(drafter) == "eagle3"
    kind = "EAGLE-3" if eagle3 else "EAGLE-1/2"
    head = [f"# {_name(drafter)} for {'vLLM' if fmt == 'vllm' else 'SGLang'}", "",
            f"{kind} drafter exported by `taps-ray drafter export` for target "
            f"`{served_target}`; tree total_tokens={tree.total_tokens}, depth={tree.depth}, "
            f"top_k={tree.top_k}.", ""]
    if fmt == "vllm":
        spec = json.dumps(vllm_speculative_config(out, tree, _vllm_method(drafter)))
        body = ["```bash", f"vllm serve {served_target} --speculative-config '{spec}'", "```", "",
                "Python: `vllm.LLM(model=..., speculative_config=...)` with the same values.",
                "On a Ray cluster (Ray Serve LLM, vLLM engine):", "", "```bash",
                f"serve run {out / 'serve_llm.yaml'}   # or: taps-ray serve "
                f"{out / 'serve_llm.yaml'}", "```"]
    else:
        flags = " ".join(f"{k} {v}" for k, v in sglang_flags(tree).items())
        token_map = (f" --speculative-token-map {out / TOKEN_MAP_FILE}"
                     if drafter.draft_vocab is not None and not eagle3 else "")
        body = ["```bash", f"python -m sglang.launch_server --model-path {served_target} "
                f"--speculative-algorithm {'EAGLE3' if eagle3 else 'EAGLE'} "
                f"--speculative-draft-model-path {out} {flags}{token_map}", "```"]
    notes = [f"Note: {n}." for n in engine_notes(drafter, fmt)]
    back = ["", f"Back into taps-ray: `taps-ray drafter import {out} --target TARGET --out DIR`."]
    return "\n".join(head + body + ([""] + notes if notes else []) + back) + "\n"


def write_folder(out: Path, files: dict[str, bytes]) -> None:
    """All files into a temp folder beside `out`, then one rename: never a half folder."""
    if out.exists():
        raise TapsError(f"output folder '{out}' exists; remove it or pass another --out")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _name(drafter: EagleDrafter) -> str:
    return (getattr(drafter, "meta", None) or DrafterMeta()).name
