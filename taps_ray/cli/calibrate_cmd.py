"""`taps-ray calibrate`: measure this machine's cost profile (T1, Tv(n), draft rounds, overheads).

The profile is saved as JSON keyed by target, dtype, device, threads and kernels (default: under
the taps cache dir) and read back by everything that predicts speed; a profile of other hardware
is refused, never used silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taps_ray.config.schema import DEFAULT_TARGET
from taps_ray.errors import TapsError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibrate", help="measure this machine's decoding cost profile")
    p.add_argument("--target", default=DEFAULT_TARGET, help="alias, hub id or local HF folder")
    p.add_argument("--drafters", nargs="+", default=[], metavar="DIR",
                   help="drafter folders, 'untrained' or 'prompt-lookup[:opts]' (default: "
                        "one untrained head, which costs what any full-vocabulary head costs)")
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if present)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the "
                                                 "serving default, bf16 on cuda, fp32 on cpu)")
    p.add_argument("--kernels", default="auto", help="auto | default | prepacked: the target's "
                   "linear kernels, as serving loads them (auto: default)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    p.add_argument("--out", default=None, help="profile file (default: <cache>/profiles/...)")
    p.add_argument("--kv-lens", default=None, help="KV lengths of Tv(n), e.g. 128,512")
    p.add_argument("--n-list", default=None, help="verify sizes n, e.g. 1,2,4,8,16,32,64")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement")
    p.add_argument("--quick", action="store_true", help="few sizes and repeats (smoke tests)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from taps_ray.models.target import load_target
    from taps_ray.speed.calibrate import calibrate
    from taps_ray.speed.profile import default_profile_path, machine_key, save_profile

    settings = _settings(args)
    device = parse_device(args.device)
    _set_threads(args.threads)
    target = load_target(args.target, device=device, dtype=args.dtype, kernels=args.kernels)
    key = machine_key(target)
    out = Path(args.out) if args.out else default_profile_path(key)
    _check_out(out, key)
    drafters = load_drafters(args.drafters or ["untrained"], target)
    profile = calibrate(target, drafters, settings, key, progress=_progress)
    save_profile(profile, out)
    if args.json:
        from taps_ray.speed.profile import profile_to_dict

        print(json.dumps(profile_to_dict(profile), indent=2))
    else:
        print(format_profile(profile))
    print(f"taps-ray calibrate: profile saved to {out}", file=sys.stderr)
    return 0


def _settings(args: argparse.Namespace):
    from dataclasses import replace

    from taps_ray.speed.calibrate import CalibrationSettings

    base = CalibrationSettings.quick() if args.quick else CalibrationSettings()
    changes = {}
    if args.kv_lens:
        changes["kv_lens"] = _int_list("--kv-lens", args.kv_lens)
    if args.n_list:
        changes["n_list"] = _int_list("--n-list", args.n_list)
    if args.repeats is not None:
        changes["repeats"] = args.repeats
    return replace(base, **changes)


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise TapsError(f"{flag} '{text}' must be comma-separated integers > 0, e.g. 128,512")
    return tuple(sorted({int(p) for p in parts}))


def parse_device(text: str | None):
    """A torch device this machine has: cpu, or cuda[:i] when CUDA is present."""
    import torch

    if text is None:
        return None
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise TapsError(f"--device '{text}' is not a device; use cpu or cuda[:index]") from None
    if device.type not in ("cpu", "cuda"):
        raise TapsError(f"--device '{text}' is not supported for calibration; use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TapsError(f"--device '{text}' asks for CUDA but this machine has no CUDA device; "
                        "use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise TapsError(f"--device '{text}': this machine has {torch.cuda.device_count()} CUDA "
                        "device(s); pick an index below that")
    return device


def _set_threads(threads: int) -> None:
    import torch

    if threads < 0:
        raise TapsError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)


def _check_out(out: Path, key) -> None:
    """An existing profile file is replaced only by a profile of the same key; a corrupt one or
    another machine's is never clobbered."""
    from taps_ray.speed.profile import load_profile

    if out.is_dir():
        raise TapsError(f"--out '{out}' is a folder; pass a file path such as profile.json")
    if out.exists():
        load_profile(out, expect=key)


def load_drafters(specs: list[str], target) -> dict:
    """name -> drafter, through the project's drafter loader, refusing another target's."""
    from taps_ray.decoding.prompt_lookup import load_drafter_spec

    drafters: dict = {}
    for seed, spec in enumerate(specs):
        drafter = load_drafter_spec(spec, target, seed=seed)
        check_drafter_target(spec, getattr(drafter.meta, "target", ""), target.name)
        name = drafter.meta.name
        if name in drafters:
            raise TapsError(f"two drafters are named '{name}' ({spec}); calibrate each once")
        drafters[name] = drafter
    return drafters


def check_drafter_target(spec: str, trained_for: str, target_name: str) -> None:
    """A drafter records the target it was trained for; another target's is refused (its cost,
    let alone its drafts, says nothing about this target)."""
    if not trained_for or trained_for == target_name or _same_folder(trained_for, target_name):
        return
    raise TapsError(f"drafter '{spec}' was trained for target '{trained_for}', not "
                    f"'{target_name}'; pass --target {trained_for} or a drafter of this target")


def _same_folder(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def format_profile(profile) -> str:
    """The profile as terminal tables: Tv(n) per KV length and Tv/T1, drafter rounds, overheads."""
    k = profile.key
    kvs = sorted(profile.verify_s)
    ns = sorted({n for curve in profile.verify_s.values() for n in curve})
    lines = [
        f"cost profile: {k.target} | {k.dtype} | {k.device} | {k.threads} threads | "
        f"kernels {k.kernels}",
        f"T1 (plain step, kv {profile.ref_kv_len}): {profile.t1_s * 1e3:.2f} ms "
        f"= {1 / profile.t1_s:.1f} tokens/s plain",
        "",
        f"{'n':>4}  " + "  ".join(f"{f'Tv kv={kv} ms':>14}" for kv in kvs)
        + f"  {f'Tv/T1 kv={profile.ref_kv_len}':>14}",
    ]
    for n in ns:
        cells = [f"{profile.verify_s[kv][n] * 1e3:>14.2f}" if n in profile.verify_s[kv]
                 else f"{'-':>14}" for kv in kvs]
        lines.append(f"{n:>4}  " + "  ".join(cells) + f"  {profile.tv(n) / profile.t1_s:>14.2f}")
    lines += ["", "draft rounds (ms per round by frontier width; per-draft cost apart):"]
    for name, rounds in profile.draft_round_s.items():
        cells = "  ".join(f"w={w}: {s * 1e3:.2f}" for w, s in sorted(rounds.items()))
        call = profile.draft_call_s.get(name, 0.0)
        lines.append(f"  {name:<24} {cells}" + (f"  per draft: {call * 1e3:.3f}" if call else ""))
    per_tree = {"route": " per tree", "merge": " per tree", "logits_row": " per accepted token"}
    lines += ["", "overheads (ms): " + ", ".join(
        f"{name} {s * 1e3:.3f}{per_tree.get(name, ' per step')}"
        for name, s in profile.overhead_s.items())]
    return "\n".join(lines + _batch_lines(profile))


def _batch_lines(profile) -> list[str]:
    """Tb(B, q): one batched forward of B sequences of q tokens, and what plain batching buys."""
    table = profile.batch_verify_s
    if not table:
        return []
    qs = sorted({q for row in table.values() for q in row})
    lines = ["", "batched forward Tb(B, q) ms (B sequences x q tokens each; "
             "plain tokens/s = B / Tb(B, 1)):",
             f"{'B':>4}  " + "  ".join(f"{f'q={q}':>9}" for q in qs) + f"  {'plain tok/s':>11}"]
    for b in sorted(table):
        cells = [f"{table[b][q] * 1e3:>9.2f}" if q in table[b] else f"{'-':>9}" for q in qs]
        plain = f"{b / table[b][1]:>11.1f}" if 1 in table[b] else f"{'-':>11}"
        lines.append(f"{b:>4}  " + "  ".join(cells) + f"  {plain}")
    return lines
