"""`taps-ray drafter import|export`: drafters in the published EAGLE-1/2 layout.

    taps-ray drafter import PATH --target T --out DIR [--name N] [--method eagle2|hass]
    taps-ray drafter export DRAFTER --format vllm|sglang --out DIR [--best-config FILE]

Import reads an EAGLE / HASS / TAPS-study checkpoint (or a folder exported below) into a taps-ray
drafter folder; export writes the folder vLLM or SGLang loads, with a README of launch commands
(and, for vLLM, a Ray Serve LLM app). The mappings live in taps_ray/models/eagle_format.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from taps_ray.errors import TapsError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("drafter", help="import EAGLE/HASS heads; export for vLLM/SGLang")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = actions.add_parser("import", help="an EAGLE / HASS checkpoint -> a taps-ray drafter")
    imp.add_argument("path", help="checkpoint folder (config.json + pytorch_model.bin or "
                                  "*.safetensors) or its weights file")
    imp.add_argument("--target", required=True, help="target alias, hub id or HF folder")
    imp.add_argument("--out", required=True, help="new drafter folder to write")
    imp.add_argument("--name", default="", help="drafter name (default: the checkpoint's)")
    imp.add_argument("--method", choices=("eagle2", "hass"), default="",
                     help="how the head was trained (default: recorded, else eagle2)")
    imp.set_defaults(func=run_import)
    exp = actions.add_parser("export", help="a drafter -> a vLLM or SGLang EAGLE folder")
    exp.add_argument("drafter", help="drafter folder (taps.json layout: eagle)")
    exp.add_argument("--format", required=True, choices=("vllm", "sglang"))
    exp.add_argument("--out", required=True, help="new folder to write")
    exp.add_argument("--target", default="", help="model the engine loads (default: the "
                                                  "drafter's target; the built-in alias maps to "
                                                  "its converted HF folder)")
    exp.add_argument("--best-config", default="", help="take the tree from this best_config.yaml")
    for key in ("total_tokens", "depth", "top_k"):
        exp.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, dest=key)
    exp.set_defaults(func=run_export)


def run_import(args: argparse.Namespace) -> int:
    from taps_ray.models.drafter import save_drafter
    from taps_ray.models.eagle_format import import_published

    out = Path(args.out)
    if out.exists():
        raise TapsError(f"output folder '{out}' exists; remove it or pass another --out")
    config, fingerprint = _target_info(args.target)
    drafter = import_published(args.path, config, target=args.target, fingerprint=fingerprint,
                               name=args.name, method=args.method)
    save_drafter(drafter, out, drafter.meta)
    print(f"imported {args.path} -> {out} (drafter {drafter.meta.name}, layout eagle, "
          f"{drafter.draft_vocab_size or config.vocab_size} draft tokens)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from taps_ray.models.drafter import read_drafter
    from taps_ray.models.eagle_format import engine_notes, export_folder

    drafter = read_drafter(args.drafter)
    tree = _tree(args, drafter.meta.extra.get("tree"))
    target = args.target or served_target(drafter.meta.target)
    out = export_folder(drafter, args.format, args.out, tree=tree, served_target=target)
    print(f"wrote {out} for {args.format}; launch commands in {out / 'README.md'}")
    for note in engine_notes(drafter, args.format):
        print(f"note: {note}")
    return 0


def served_target(name: str) -> str:
    """What an engine should load for a recorded target: the built-in alias is a GGUF converted
    once to an HF folder, and that folder (not the hub's weights) is what the drafter learned."""
    from taps_ray.models.target import DEFAULT_TARGET, cache_dir

    if not name:
        raise TapsError("the drafter records no target; pass --target with the model to serve")
    return str(cache_dir() / "models" / DEFAULT_TARGET) if name == DEFAULT_TARGET else name


def _target_info(name: str) -> tuple[object, str]:
    """(config, tokenizer fingerprint) of a target without loading its weights."""
    from transformers import AutoConfig

    from taps_ray.models.drafter import tokenizer_fingerprint
    from taps_ray.models.target import load_tokenizer, resolve_target_folder

    config = AutoConfig.from_pretrained(resolve_target_folder(name))
    try:
        fingerprint = tokenizer_fingerprint(load_tokenizer(name))
    except (TapsError, OSError, ValueError):  # a folder without a (chat) tokenizer
        fingerprint = ""
    return config, fingerprint


def _tree(args: argparse.Namespace, recorded: dict | None) -> object:
    from dataclasses import asdict

    from taps_ray.config.loader import load_yaml
    from taps_ray.config.schema import TreeConfig

    values = asdict(TreeConfig())
    values.update(recorded or {})
    if args.best_config:
        values.update(load_yaml(args.best_config).get("tree") or {})
    values.update({k: getattr(args, k) for k in values if getattr(args, k, None) is not None})
    try:
        return TreeConfig(**values)
    except (TypeError, ValueError) as err:
        raise TapsError(f"tree {values} is invalid ({err}); fix --best-config or the flags") \
            from None
