"""What a confidence calibration can do for routing between two specialists (issue 18,
deliverable 4), measured on the held-out calibration data of `taps-ray drafter calibrate`.

For a math and a chat head: the same held-out prompts (MathInstruct and ShareGPT first turns,
none drawn for either head's training), every position, every node of the 60/5/10 tree. Reports
  - the oracle: at how many positions one head's tree is accepted strictly longer than the
    other's, and which (ties, where both accept the same length, cannot be routed wrongly);
  - each fit (identity, temperature, isotonic, context at several ridge strengths), fitted on
    alternate prompts, scored on the others: node log-loss, and how often the calibrated
    tree score sends a position to its domain's head (what the routing shares count).

    python benchmarks/calibration_study.py MATH_DRAFTER CHAT_DRAFTER --out FILE [--prompts 32]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HOME = {"mathinstruct": 0, "sharegpt": 1}  # index of the domain's own head
L2S = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def collect(folders: list[str], prompts_n: int, cache: Path) -> dict:
    """Pairs of both heads on the same held-out prompts (cached in `cache`)."""
    import torch

    if cache.is_file():
        return torch.load(cache, weights_only=False)
    from taps_ray.config.schema import TreeConfig
    from taps_ray.evaluation import confidence
    from taps_ray.evaluation.replay import continuations
    from taps_ray.models.drafter import load_drafter, read_meta
    from taps_ray.models.target import load_target

    metas = [read_meta(f) for f in folders]
    target = load_target(metas[0].target)
    skip = set().union(*((confidence.training_ids(m) or set()) for m in metas))
    records = confidence.heldout_records(prompts_n, 0, skip)
    prompts = continuations(target, records, 96, progress=True)
    pairs = [confidence.collect(target, load_drafter(f, target), prompts, TreeConfig())
             for f in folders]
    out = {"names": [m.name for m in metas], "pairs": pairs,
           "excluded": {m.name: len(confidence.training_ids(m) or ()) for m in metas}}
    tmp = cache.with_suffix(".tmp")
    torch.save(out, tmp)
    os.replace(tmp, cache)
    return out


def accepted_per_tree(p):
    import torch

    n = p.contexts.shape[0]
    return torch.zeros(n, dtype=torch.float64).index_add_(0, p.tree_of, p.accepted)


def score_per_tree(calibration, p):
    import torch

    from taps_ray.evaluation import confidence

    n = p.contexts.shape[0]
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, p.tree_of,
                                                          confidence.predict(calibration, [p]))
    return sums / torch.bincount(p.tree_of, minlength=n)


def oracle(pairs: list) -> dict:
    out = {}
    for source, home in HOME.items():
        own = other = tie = 0
        for a, b in zip(pairs[0], pairs[1], strict=True):
            if a.source != source:
                continue
            acc = [accepted_per_tree(a), accepted_per_tree(b)]
            own += int((acc[home] > acc[1 - home]).sum())
            other += int((acc[1 - home] > acc[home]).sum())
            tie += int((acc[0] == acc[1]).sum())
        out[source] = {"positions": own + other + tie, "ties": tie, "own_head_longer": own,
                       "other_head_longer": other,
                       "tie_share": round(tie / max(own + other + tie, 1), 4),
                       "own_share_of_decisive": round(own / max(own + other, 1), 4)}
    return out


def fits_of(pairs: list) -> dict:
    from taps_ray.decoding import calibration as cal
    from taps_ray.evaluation import confidence

    fit_part, _ = confidence.split(pairs)
    s, a = confidence._cat(fit_part)
    fits = {"identity": cal.IDENTITY, "temperature": cal.fit_temperature(s, a),
            "isotonic": cal.fit_isotonic(s, a)}
    contexts, tree_of = confidence._cat_contexts(fit_part)
    for l2 in L2S:
        fits[f"context l2={l2:g}"] = cal.fit_context(s, a, contexts, tree_of, l2)
    return fits


def study(data: dict) -> dict:
    from taps_ray.evaluation import confidence

    heads = data["pairs"]
    fits = [fits_of(p) for p in heads]
    held = [confidence.split(p)[1] for p in heads]
    rows = {}
    for name in fits[0]:
        row = {"heldout_log_loss": [confidence.scores_of(f[name], h)["log_loss"]
                                    for f, h in zip(fits, held, strict=True)]}
        for source, home in HOME.items():
            wins = total = 0
            for a, b in zip(held[0], held[1], strict=True):
                if a.source != source:
                    continue
                scores = [score_per_tree(fits[0][name], a), score_per_tree(fits[1][name], b)]
                wins += int((scores[home] > scores[1 - home]).sum())
                total += scores[0].numel()
            row[f"{source}_to_own_head"] = round(wins / max(total, 1), 4)
        rows[name] = row
    return {"heads": data["names"], "excluded_training_records": data["excluded"],
            "oracle_all_prompts": oracle(heads), "oracle_heldout_half": oracle(held),
            "fits": rows,
            "note": "fits on alternate prompts per source, scored on the others; "
                    "to_own_head: share of held-out positions whose calibrated mean tree "
                    "score is higher for the domain's own head (ties count against)"}


def table(result: dict) -> str:
    """The Markdown table of docs/results.md: one row per fit."""
    math, chat = result["heads"]
    lines = [f"| fit | held-out log-loss {math} | {chat} | MathInstruct positions to {math} | "
             f"ShareGPT positions to {chat} |", "|" + " --- |" * 5]
    for name, row in result["fits"].items():
        loss = row["heldout_log_loss"]
        lines.append(f"| {name} | {loss[0]:.5f} | {loss[1]:.5f} | "
                     f"{100 * row['mathinstruct_to_own_head']:.1f} % | "
                     f"{100 * row['sharegpt_to_own_head']:.1f} % |")
    oracle = result["oracle_heldout_half"]
    for source in ("mathinstruct", "sharegpt"):
        o = oracle[source]
        lines.append(f"| oracle ({source}) | - | - | ties {100 * o['tie_share']:.1f} %; "
                     f"own head longer at {100 * o['own_share_of_decisive']:.1f} % of the rest "
                     f"({o['own_head_longer']} / {o['own_head_longer'] + o['other_head_longer']})"
                     " | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("math")
    parser.add_argument("chat")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", default="runs/calibration-study",
                        help="folder for the collected pairs (reused)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    out = Path(args.out)
    cache = Path(args.cache) / (out.stem + ".pt")
    cache.parent.mkdir(parents=True, exist_ok=True)
    result = study(collect([args.math, args.chat], args.prompts, cache))
    result["command"] = (f"python benchmarks/calibration_study.py {args.math} {args.chat} "
                         f"--prompts {args.prompts} --out {args.out}")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
