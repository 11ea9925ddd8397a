"""Target loading: the built-in alias converts atomically; bad names fail fast and clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from taps_ray.errors import TapsError
from taps_ray.models import target as target_mod


def test_unknown_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(TapsError, match="hub is unreachable.*smollm2-135m-instruct"):
        target_mod.resolve_target_folder("someone/not-a-cached-model")
    assert time.monotonic() - start < 10


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(TapsError, match="has no config.json"):
        target_mod.resolve_target_folder(str(tmp_path))


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(TapsError, match="is not a folder"):
        target_mod.resolve_target_folder(str(tmp_path / "nope"))


def test_bad_dtype_is_refused():
    with pytest.raises(TapsError, match="dtype 'fp8'"):
        target_mod.parse_dtype("fp8")


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path))

    def half_written(gguf, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(target_mod, "_convert_gguf", half_written)
    with pytest.raises(RuntimeError):
        target_mod.ensure_default_target()
    assert list((tmp_path / "models").iterdir()) == []


def test_concurrent_first_loads_convert_once_and_never_replace_a_ready_folder(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path))
    calls = []

    def slow_convert(gguf, out):
        calls.append(out)
        out.mkdir(parents=True)
        time.sleep(0.3)  # both callers are inside ensure_default_target meanwhile
        (out / target_mod._READY).write_text("{}")

    monkeypatch.setattr(target_mod, "_convert_gguf", slow_convert)
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: target_mod.ensure_default_target(), range(2)))
    assert len(calls) == 1
    assert folders[0] == folders[1] and (folders[0] / target_mod._READY).is_file()


@pytest.mark.slow
def test_killed_conversion_never_loads_half_written(tmp_path):
    """SIGKILL during the real conversion: no final folder; the next call converts cleanly."""
    env = {**os.environ, "TAPS_CACHE_DIR": str(tmp_path)}
    code = "from taps_ray.models.target import ensure_default_target; ensure_default_target()"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    models = tmp_path / "models"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(models.glob("*.tmp-*/model.safetensors")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (models / target_mod.DEFAULT_TARGET).exists()
    final = subprocess.run([sys.executable, "-c", code], env=env, timeout=300)
    assert final.returncode == 0
    assert sorted(p.name for p in models.iterdir()) == [target_mod.DEFAULT_TARGET]


def test_prepacked_kernels_decode_like_the_default_ones():
    import torch

    from taps_ray.decoding.engine import generate_plain
    from taps_ray.decoding.sampling import SamplingParams
    from tests.tiny import tiny_target

    default, packed = tiny_target("llama", seed=1), tiny_target("llama", seed=1)
    assert target_mod.prepack_linears(packed.model.get_decoder()) == 2 * 7  # q k v o gate up down
    assert target_mod.kernel_variant(packed.model) == "prepacked"
    assert target_mod.kernel_variant(default.model) == "default"
    ids = torch.tensor([[3, 9, 4, 1, 7]])
    with torch.inference_mode():
        a, b = default.model(ids).logits, packed.model(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    greedy = SamplingParams()
    assert (generate_plain(default, [3, 9, 4], greedy, 12, set()).tokens
            == generate_plain(packed, [3, 9, 4], greedy, 12, set()).tokens)


def test_unknown_or_unfit_kernels_are_refused(tmp_path):
    with pytest.raises(TapsError, match="kernels 'fast' is unknown"):
        target_mod.load_target("smollm2-135m-instruct", kernels="fast")
    with pytest.raises(TapsError, match="need a CPU, fp32"):
        target_mod._resolve_kernels("prepacked", target_mod.torch.device("cpu"),
                                    target_mod.torch.bfloat16)
