"""A machine's cost profile: measured step times of one target (and its drafters) on one device.

    T1        one plain decoding step (forward of one token + its LM-head row + argmax)
    Tv(n)     one verify step of an n-token tree (root included): mask building, the forward,
              the LM-head row of the root and the greedy walk; per KV length
    Tb(B, q)  one batched verify forward of B sequences of q tokens each (continuous batching)
    Td(w)     one draft round of a drafter at frontier width w (decoder layer + LM head + top-k)
    overheads routing / merging per tree, one extra LM-head row per accepted token, the engine's
              per-step bookkeeping (commit, cache compaction)

A profile is valid only for its HardwareKey; loading it under another key is refused, never used
silently. On disk: one JSON file, written atomically.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from taps_ray.config.schema import TreeConfig
from taps_ray.errors import TapsError

FORMAT = 1  # bumped when the JSON layout changes; older files are refused with a rerun hint
RERUN = "rerun `taps-ray calibrate`"


@dataclass(frozen=True)
class HardwareKey:
    """What a profile's numbers depend on; a profile is valid only for the same key."""

    target: str  # target name as given (alias, hub id, folder)
    dtype: str  # "float32" | "bfloat16" | ...
    device: str  # "cpu: <cpu model name>" or "cuda: <device name>"
    threads: int  # torch.get_num_threads() at calibration
    kernels: str  # target kernel variant serving uses ("default" | "prepacked")


@dataclass
class CostProfile:
    key: HardwareKey
    t1_s: float  # median plain decoding step at the reference KV length
    verify_s: dict[int, dict[int, float]]  # kv_len -> n (tokens fed incl. root) -> seconds
    draft_round_s: dict[str, dict[int, float]]  # drafter -> frontier width -> seconds per round
    overhead_s: dict[str, float]  # see OVERHEADS
    created_at: str
    git_rev: str
    ref_kv_len: int = 256  # KV length of t1_s; tv(n) defaults to it
    draft_call_s: dict[str, float] = field(default_factory=dict)  # per draft, outside rounds
    # rows B -> tokens per row q -> seconds of one batched verify forward at ref_kv_len
    # (continuous batching); empty in profiles measured before it existed
    batch_verify_s: dict[int, dict[int, float]] = field(default_factory=dict)

    def tv(self, n: float, kv_len: int | None = None) -> float:
        """Seconds of one verify step of n tokens: linear in n (extrapolated past the largest
        measured n), linear between measured KV lengths and clamped outside them."""
        kvs = sorted(self.verify_s)
        if not kvs:
            raise TapsError(f"the profile has no verify timings; {RERUN}")
        kv = self.ref_kv_len if kv_len is None else kv_len
        if kv <= kvs[0] or kv >= kvs[-1]:
            return _interp_n(self.verify_s[kvs[0] if kv <= kvs[0] else kvs[-1]], n)
        hi = bisect_left(kvs, kv)
        lo = hi - 1
        w = (kv - kvs[lo]) / (kvs[hi] - kvs[lo])
        return (1 - w) * _interp_n(self.verify_s[kvs[lo]], n) + w * _interp_n(
            self.verify_s[kvs[hi]], n
        )

    def tb(self, rows: int, q: float) -> float:
        """Seconds of one batched forward of `rows` sequences of q tokens each: linear in q
        and in rows between measured points (extrapolated past the largest); without a batched
        table, Tv(rows * q) (the batch as one long block)."""
        table = self.batch_verify_s
        if not table:
            return self.tv(rows * q)
        bs = sorted(table)
        if len(bs) == 1 or rows <= bs[0]:
            return _interp_n(table[bs[0]], q) * (rows / bs[0] if len(bs) == 1 else 1.0)
        i = min(max(bisect_left(bs, rows), 1), len(bs) - 1)
        lo, hi = bs[i - 1], bs[i]
        y0, y1 = _interp_n(table[lo], q), _interp_n(table[hi], q)
        return max(y0 + (y1 - y0) * (rows - lo) / (hi - lo), 0.0)

    def round_s(self, drafter: str, width: int) -> float:
        """Seconds of one draft round of `drafter` at frontier `width` (linear between widths)."""
        if drafter not in self.draft_round_s:
            known = ", ".join(sorted(self.draft_round_s)) or "none"
            raise TapsError(
                f"drafter '{drafter}' is not in the cost profile (it has: {known}); "
                f"run `taps-ray calibrate --drafters` with its folder"
            )
        return _interp_n(self.draft_round_s[drafter], width)

    def draft_s(self, drafter: str, tree: TreeConfig) -> float:
        """One draft: the root round (width 1) + `tree.depth` rounds of width `tree.top_k`, plus
        any per-draft cost outside rounds (prompt lookup has only that)."""
        rounds = self.round_s(drafter, 1) + tree.depth * self.round_s(drafter, tree.top_k)
        return rounds + self.draft_call_s.get(drafter, 0.0)


# overhead_s keys: seconds, each measured on its own
OVERHEADS = {
    "route": "scoring one draft tree for routing (x N trees per routed step)",
    "merge": "trie-merging one draft tree of the default shape (x N trees per merged step)",
    "logits_row": "one LM-head row + argmax: verification computes one per accepted token",
    "step": "the engine's per-step work outside drafting and verifying (commit, bookkeeping)",
}


def _interp_n(points: dict[int, float], n: float) -> float:
    """Piecewise-linear in n through the measured points; linear extrapolation past the ends."""
    xs = sorted(points)
    if len(xs) == 1:
        return points[xs[0]]
    i = min(max(bisect_left(xs, n), 1), len(xs) - 1)
    x0, x1 = xs[i - 1], xs[i]
    y0, y1 = points[x0], points[x1]
    value = y0 + (y1 - y0) * (n - x0) / (x1 - x0)
    return max(value, 0.0) if n > xs[0] else y0  # never below zero, flat below the smallest n


def current_key(
    target_name: str,
    dtype: object,
    device: object,
    threads: int | None = None,
    kernels: str = "default",
) -> HardwareKey:
    """The key of this machine for a target in `dtype` on `device` (torch dtype/device or str)."""
    import torch

    return HardwareKey(
        target=str(target_name),
        dtype=str(dtype).removeprefix("torch."),
        device=device_name(torch.device(device)),
        threads=int(threads if threads is not None else torch.get_num_threads()),
        kernels=kernels,
    )


def machine_key(target, threads: int | None = None) -> HardwareKey:
    """This machine's key for a loaded Target, as it decodes (its dtype, device and kernels)."""
    return current_key(target.name, target.dtype, target.device, threads,
                       getattr(target, "kernels", "default"))


def device_name(device: object) -> str:
    """'cpu: <model name from /proc/cpuinfo>' or 'cuda: <torch.cuda.get_device_name()>'."""
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {_cpu_model()}"


def _cpu_model() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def default_profile_path(key: HardwareKey) -> Path:
    """<taps cache dir>/profiles/<slug>.json: one file per key."""
    from taps_ray.models.target import cache_dir

    parts = [Path(key.target).name or key.target, key.dtype, key.device, f"t{key.threads}",
             key.kernels]
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(parts)).strip("-").lower()
    return cache_dir() / "profiles" / f"{slug}.json"


def profile_to_dict(profile: CostProfile) -> dict:
    data = asdict(profile)
    data["verify_s"] = {str(kv): _str_keys(v) for kv, v in profile.verify_s.items()}
    data["draft_round_s"] = {name: _str_keys(v) for name, v in profile.draft_round_s.items()}
    data["batch_verify_s"] = {str(b): _str_keys(v) for b, v in profile.batch_verify_s.items()}
    return {"format": FORMAT, **data}


def profile_from_dict(data: dict) -> CostProfile:
    """Inverse of profile_to_dict; raises KeyError/TypeError/ValueError on a malformed dict."""
    if data.get("format") != FORMAT:
        raise ValueError(f"format {data.get('format')!r} is not {FORMAT}")
    body = {k: v for k, v in data.items() if k != "format"}
    known = {f.name for f in fields(CostProfile)}
    if set(body) - known:
        raise ValueError(f"unknown fields {sorted(set(body) - known)}")
    body["key"] = HardwareKey(**body["key"])
    body["verify_s"] = {int(kv): _int_keys(v) for kv, v in body["verify_s"].items()}
    body["draft_round_s"] = {str(k): _int_keys(v) for k, v in body["draft_round_s"].items()}
    body["overhead_s"] = {str(k): float(v) for k, v in body["overhead_s"].items()}
    body["draft_call_s"] = {str(k): float(v) for k, v in body.get("draft_call_s", {}).items()}
    body["batch_verify_s"] = {int(b): _int_keys(v)
                              for b, v in body.get("batch_verify_s", {}).items()}
    body["t1_s"] = float(body["t1_s"])
    if not body["t1_s"] > 0:
        raise ValueError("t1_s must be > 0")
    return CostProfile(**body)


def _str_keys(points: dict[int, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in sorted(points.items())}


def _int_keys(points: dict) -> dict[int, float]:
    return {int(k): float(v) for k, v in points.items()}


def save_profile(profile: CostProfile, path: str | Path) -> Path:
    """Write the profile as JSON atomically (temp name in the same folder, then rename)."""
    from taps_ray.evaluation.report import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(profile_to_dict(profile), indent=2) + "\n"
    return write_atomic(path, text.encode())


def load_profile(path: str | Path, expect: HardwareKey | None = None) -> CostProfile:
    """Read a profile; a missing, corrupt or (with `expect`) other-machine file is a TapsError."""
    path = Path(path)
    if not path.is_file():
        raise TapsError(f"cost profile '{path}' does not exist; {RERUN} to create it")
    try:
        profile = profile_from_dict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            ValueError, AttributeError) as err:
        raise TapsError(
            f"cost profile '{path}' is corrupt ({type(err).__name__}: {err}); delete it and "
            f"{RERUN}"
        ) from None
    if expect is not None:
        check_key(profile.key, expect, path)
    return profile


def check_key(found: HardwareKey, expect: HardwareKey, path: str | Path) -> None:
    """Refuse a profile measured under another key, naming every field that differs."""
    diffs = [
        f"{f.name} {getattr(found, f.name)!r} (here {getattr(expect, f.name)!r})"
        for f in fields(HardwareKey)
        if getattr(found, f.name) != getattr(expect, f.name)
    ]
    if diffs:
        raise TapsError(
            f"cost profile '{path}' was measured for other hardware or settings: "
            f"{'; '.join(diffs)}; {RERUN} on this machine with these settings"
        )
