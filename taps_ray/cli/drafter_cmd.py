"""`taps-ray drafter import|export|calibrate|fit-router`: drafters in the published EAGLE-1/2 and
EAGLE-3 layouts, their confidence calibration and the routing scores of heads routed together.

    taps-ray drafter import PATH --target T --out DIR [--name N] [--method eagle2|hass|eagle3]
    taps-ray drafter export DRAFTER --format vllm|sglang --out DIR [--best-config FILE]
    taps-ray drafter calibrate DRAFTER [DRAFTER...] [--prompts N] [--max-new-tokens M]
                               [--method auto|temperature|isotonic|context]
    taps-ray drafter fit-router DRAFTER DRAFTER [...] [--prompts N] [--max-new-tokens M]

Import reads an EAGLE / HASS / TAPS-study / EAGLE-3 checkpoint (or a folder exported below) into
a taps-ray drafter folder; export writes the folder vLLM or SGLang loads, with a README of launch
commands (and, for vLLM, a Ray Serve LLM app). The mappings live in taps_ray/models/
eagle_format.py (EAGLE-1/2) and eagle3_format.py (EAGLE-3).
Calibrate fits each drafter's node confidence to its real acceptance on held-out replay and
stores the map in its taps.json, where confidence routing reads it (evaluation/confidence.py).
Fit-router fits the routing score of heads meant to be routed together on the same held-out
replay and stores each head's part in its taps.json, where route-learned reads it
(evaluation/routing_fit.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from taps_ray.errors import TapsError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("drafter",
                              help="import EAGLE/HASS/EAGLE-3 heads; export for vLLM/SGLang")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = actions.add_parser("import",
                             help="an EAGLE / HASS / EAGLE-3 checkpoint -> a taps-ray drafter")
    imp.add_argument("path", help="checkpoint folder (config.json + pytorch_model.bin or "
                                  "*.safetensors) or its weights file")
    imp.add_argument("--target", required=True, help="target alias, hub id or HF folder")
    imp.add_argument("--out", required=True, help="new drafter folder to write")
    imp.add_argument("--name", default="", help="drafter name (default: the checkpoint's)")
    imp.add_argument("--method", choices=("eagle2", "hass", "eagle3"), default="",
                     help="how the head was trained (default: recorded, else eagle2, or eagle3 "
                          "for an EAGLE-3 config)")
    imp.set_defaults(func=run_import)
    exp = actions.add_parser("export", help="a drafter -> a vLLM or SGLang EAGLE folder")
    exp.add_argument("drafter", help="drafter folder (taps.json layout: eagle or eagle3)")
    exp.add_argument("--format", required=True, choices=("vllm", "sglang"))
    exp.add_argument("--out", required=True, help="new folder to write")
    exp.add_argument("--target", default="", help="model the engine loads (default: the "
                                                  "drafter's target; the built-in alias maps to "
                                                  "its converted HF folder)")
    exp.add_argument("--best-config", default="", help="take the tree from this best_config.yaml")
    for key in ("total_tokens", "depth", "top_k"):
        exp.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, dest=key)
    exp.set_defaults(func=run_export)
    _add_calibrate(actions)


def _add_calibrate(actions: argparse._SubParsersAction) -> None:
    cal = actions.add_parser("calibrate", help="fit drafters' confidences to their acceptance "
                                               "(stored in taps.json; used by route-confidence)")
    cal.add_argument("drafters", nargs="+", metavar="DRAFTER", help="drafter folders (one target)")
    cal.add_argument("--prompts", type=int, default=32,
                     help="held-out prompts, half MathInstruct, half ShareGPT (default 32)")
    cal.add_argument("--max-new-tokens", type=int, default=96,
                     help="greedy continuation length per prompt (default 96)")
    cal.add_argument("--method", default="auto", help="auto (best held-out log-loss), "
                     "temperature, isotonic or context (temperature x a trust factor of the "
                     "head's hidden state: learns where the head is overconfident)")
    cal.add_argument("--seed", type=int, default=0, help="draw of the held-out prompts")
    cal.set_defaults(func=run_calibrate)
    fit = actions.add_parser("fit-router", help="fit the routing score of heads routed together "
                                                "(stored in taps.json; used by route-learned)")
    fit.add_argument("drafters", nargs="+", metavar="DRAFTER",
                     help="two or more drafter folders (one target)")
    fit.add_argument("--prompts", type=int, default=64,
                     help="held-out prompts, half MathInstruct, half ShareGPT (default 64)")
    fit.add_argument("--max-new-tokens", type=int, default=96,
                     help="greedy continuation length per prompt (default 96)")
    fit.add_argument("--seed", type=int, default=0, help="draw of the held-out prompts")
    fit.set_defaults(func=run_fit_router, method="auto")


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
    print(f"imported {args.path} -> {out} (drafter {drafter.meta.name}, layout {drafter.layout}, "
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


def run_calibrate(args: argparse.Namespace) -> int:
    from taps_ray.config.schema import TreeConfig
    from taps_ray.evaluation import confidence
    from taps_ray.models.drafter import load_drafter

    metas = _calibrate_checks(args)
    target, prompts, data = _heldout(args, metas)
    tree = TreeConfig()
    for folder, meta in zip(args.drafters, metas, strict=True):
        pairs = confidence.collect(target, load_drafter(folder, target), prompts, tree,
                                   progress=True)
        fitted = confidence.fit_calibration(pairs, args.method)
        fitted.fitted_on.update(data)
        confidence.write_calibration(folder, fitted)
        held = fitted.fitted_on["heldout"]
        print(f"{meta.name}: {fitted.method}, held-out log-loss {held['identity']['log_loss']} "
              f"-> {held[fitted.method]['log_loss']}, Brier {held['identity']['brier']} -> "
              f"{held[fitted.method]['brier']} ({fitted.fitted_on['pairs']['heldout']} nodes); "
              f"wrote {Path(folder) / 'taps.json'}")
    return 0


def run_fit_router(args: argparse.Namespace) -> int:
    from taps_ray.config.schema import TreeConfig
    from taps_ray.decoding.calibration import calibration_of
    from taps_ray.evaluation import confidence, routing_fit
    from taps_ray.models.drafter import load_drafter

    metas = _calibrate_checks(args)
    if len(args.drafters) < 2:
        raise TapsError("fit-router needs two or more drafters, the heads routed together")
    target, prompts, data = _heldout(args, metas)
    heads = [confidence.collect(target, load_drafter(f, target), prompts, TreeConfig(), True)
             for f in args.drafters]
    names = [m.name for m in metas]
    scores = routing_fit.fit_router(heads, names, [calibration_of(m) for m in metas], data)
    routing_fit.write_routing_scores(args.drafters, scores)
    held = scores[0].fitted_on["heldout"]
    for rule in ("raw confidence", "calibrated confidence", "learned", "oracle"):
        parts = [f"{source}: {row['accepted_per_position']:.3f} accepted/position, shares "
                 + ", ".join(f"{n} {100 * v:.1f} %" for n, v in row["shares"].items())
                 for source, row in held[rule].items()]
        print(f"held out, {rule}: " + "; ".join(parts))
    print(f"wrote the routing score (fit {scores[0].fit_id}, ridge {scores[0].fitted_on['l2']}) "
          f"into {', '.join(str(Path(f) / 'taps.json') for f in args.drafters)}")
    return 0


def _heldout(args: argparse.Namespace, metas: list) -> tuple:
    """(target, held-out replay prompts, their description) for calibrate and fit-router."""
    from taps_ray.config.schema import TreeConfig
    from taps_ray.evaluation import confidence
    from taps_ray.evaluation.replay import continuations
    from taps_ray.models.target import load_target

    target = load_target(metas[0].target)
    excluded = {m.name: confidence.training_ids(m) for m in metas}
    skip = set().union(*(ids for ids in excluded.values() if ids))
    records = confidence.heldout_records(args.prompts, args.seed, skip)
    prompts = continuations(target, records, args.max_new_tokens, progress=True)
    data = confidence.describe_data(prompts, TreeConfig(), args.max_new_tokens, args.seed,
                                    {k: None if v is None else len(v) for k, v in excluded.items()})
    return target, prompts, data


def _calibrate_checks(args: argparse.Namespace) -> list:
    """Bad input as one sentence before any model loads; -> the drafters' metadata."""
    from taps_ray.evaluation.confidence import METHODS
    from taps_ray.models.drafter import read_meta

    if args.method not in METHODS:
        raise TapsError(f"--method '{args.method}' is unknown; use one of {', '.join(METHODS)}")
    if args.prompts < 4:
        raise TapsError(f"--prompts must be >= 4 (half fit, half score, both domains), "
                        f"got {args.prompts}")
    if args.max_new_tokens < 8:
        raise TapsError(f"--max-new-tokens must be >= 8, got {args.max_new_tokens}")
    metas = [read_meta(folder) for folder in args.drafters]
    targets = sorted({m.target for m in metas})
    if len(targets) != 1 or not targets[0]:
        raise TapsError(f"drafters to calibrate together must record one target, got "
                        f"{targets or 'none'}; calibrate each target's drafters separately")
    return metas


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
