"""Fit drafters' confidence calibrations on held-out replay (`taps-ray drafter calibrate`).

Held-out prompts are training-domain prompts no calibrated drafter was trained on and no
benchmark evaluates: first user turns of MathInstruct (the offline stand-in: GSM8K/MATH train,
MathQA, AQuA) and ShareGPT, half each, minus the records each drafter's taps.json says it drew.
The target's greedy continuation of each prompt is generated once (cached, as for replay); at
every position of it the drafter drafts its tree from the teacher-forced features, as replay
does, and every node gives one pair (log-confidence, accepted?): accepted = on the root path
that matches the continuation. Whole trees (not only the nodes the verifier reached) are used
because routing averages over whole trees. Each tree also records the head's hidden state at
its root (what the context fit conditions on). Half the prompts (per source) fit, the other
half score; the fit with the lowest held-out log-loss is stored (see decoding/calibration.py).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.data.records import Record, user_turns
from taps_ray.decoding import calibration as cal
from taps_ray.decoding.features import aux_layers_for
from taps_ray.decoding.proposer import DrafterSession
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.decoding.tree import DraftTree, children_lists
from taps_ray.errors import TapsError
from taps_ray.evaluation.replay import (
    KnownTrees,
    ReplayPrompt,
    item_ids,
    teacher_features,
)

SOURCES = ("mathinstruct", "sharegpt")  # the training domains of math and chat specialists
MAX_PROMPT_CHARS = 2000  # longer first turns (pasted documents) are skipped: prefill cost
METHODS = ("auto", "temperature", "isotonic", "context")
CONTEXT_L2 = (1e-3, 1e-2, 1e-1, 1.0)  # ridge strengths tried for the context fit


@dataclass
class Pairs:
    """(log-confidence, accepted) of every node of every tree of one prompt."""

    source: str
    scores: torch.Tensor  # [n] cumulative draft log-prob
    accepted: torch.Tensor  # [n] 1.0 if the node is on the accepted root path
    contexts: torch.Tensor | None = None  # [trees, d] the head's hidden state at each root
    tree_of: torch.Tensor | None = None  # [n] the tree of each node


def training_ids(meta: object) -> set[str] | None:
    """Record ids the drafter was trained on, redrawn from its recorded mixture (None when its
    taps.json records no mixture draw, e.g. an imported head)."""
    from taps_ray.data.mixture import build_mixture

    data = getattr(meta, "data", None) or {}
    if not all(k in data for k in ("mixture", "total", "seed")):
        return None
    mix = build_mixture(data["mixture"], int(data["total"]), int(data["seed"]))
    return {r.id for r in mix.records}


def heldout_records(n: int, seed: int, exclude: set[str]) -> list[Record]:
    """`n` first user turns, half from each of SOURCES (math first on odd n), none in `exclude`."""
    from taps_ray.data.registry import load_records

    out: list[Record] = []
    for i, source in enumerate(SOURCES):
        want = (n + 1 - i) // 2
        pool = [r for r in load_records(source) if r.id not in exclude and _short_first(r)]
        if len(pool) < want:
            raise TapsError(f"only {len(pool)} held-out prompts of '{source}' are available; "
                            "lower --prompts")
        picked = random.Random(f"calibrate/{seed}/{source}").sample(pool, want)
        out += [_first_turn(r) for r in picked]
    return out


def _short_first(record: Record) -> bool:
    turns = user_turns(record)
    return bool(turns) and len(turns[0]) <= MAX_PROMPT_CHARS


def _first_turn(record: Record) -> Record:
    first = next(m for m in record.messages if m.role == "user")
    return Record(record.id, record.source, (first,), record.category)


def accepted_path(tree: DraftTree, upcoming: Sequence[int]) -> list[int]:
    """Nodes of the longest root path whose tokens equal `upcoming` (greedy acceptance)."""
    children, tokens = children_lists(tree), tree.tokens.tolist()
    path: list[int] = []
    while len(path) < len(upcoming):
        parent = path[-1] if path else -1
        nxt = next((c for c in children[parent + 1] if tokens[c] == upcoming[len(path)]), None)
        if nxt is None:
            break
        path.append(nxt)
    return path


def node_pairs(session: DrafterSession, item: ReplayPrompt, features: torch.Tensor,
               tree: TreeConfig) -> Pairs:
    """Pairs of the trees at every position of `item` that has depth + 1 tokens still to come
    (nearer the end a correct deep node could not be confirmed)."""
    seq = item_ids(item, features.device)
    start, cont = len(item.prompt_ids), item.continuation
    known = KnownTrees(session, features, seq)
    known.reset(int(seq[0]))
    known.extend(features[:start], seq[1 : start + 1])
    scores, labels, contexts, tree_of = [], [], [], []
    for done in range(1, len(cont) - tree.depth):
        drafted = known.draft(tree)
        label = torch.zeros(drafted.size)
        label[accepted_path(drafted, cont[done:])] = 1.0
        scores.append(drafted.scores.detach().double().cpu())
        labels.append(label.double())
        contexts.append(known.last_hidden.detach().double().cpu())
        tree_of.append(torch.full((drafted.size,), len(contexts) - 1, dtype=torch.long))
        pos = start + done - 1
        known.extend(features[pos : pos + 1], seq[pos + 1 : pos + 2])
    if not scores:
        empty = torch.zeros(0, dtype=torch.float64)
        return Pairs(item.benchmark, empty, empty, torch.zeros(0, session.hidden_size,
                     dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    return Pairs(item.benchmark, torch.cat(scores), torch.cat(labels), torch.stack(contexts),
                 torch.cat(tree_of))


def collect(target, drafter, prompts: Sequence[ReplayPrompt], tree: TreeConfig,
            progress: bool = False) -> list[Pairs]:
    """Pairs of every prompt for one drafter (target features cached per prompt, as replay)."""
    from tqdm import tqdm

    from taps_ray.decoding.proposer import make_session

    runner = TargetRunner(target.model, aux_layers_for([drafter]))
    session = make_session(drafter, runner.embed, runner.lm_head.weight)
    items = tqdm(prompts, desc=f"trees of {drafter.meta.name}", unit="prompt",
                 disable=not progress)
    return [node_pairs(session, item, teacher_features(runner, item), tree) for item in items]


def split(pairs: Sequence[Pairs]) -> tuple[list[Pairs], list[Pairs]]:
    """(fit, held-out): alternate prompts of each source, so both halves hold both domains."""
    seen: dict[str, int] = {}
    fit, held = [], []
    for p in pairs:
        rank = seen[p.source] = seen.get(p.source, -1) + 1
        (fit if rank % 2 == 0 else held).append(p)
    return fit, held


def _cat(pairs: Sequence[Pairs]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([p.scores for p in pairs]), torch.cat([p.accepted for p in pairs])


def _cat_contexts(pairs: Sequence[Pairs]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(contexts [trees, d], tree_of [n]) over several prompts; None if any prompt lacks them."""
    if any(p.contexts is None or p.tree_of is None for p in pairs):
        return None
    offsets, seen = [], 0
    for p in pairs:
        offsets.append(p.tree_of + seen)
        seen += p.contexts.shape[0]
    return torch.cat([p.contexts for p in pairs]), torch.cat(offsets)


def predict(calibration: cal.Calibration, pairs: Sequence[Pairs]) -> torch.Tensor:
    """Calibrated acceptance probability of every node of `pairs` [n]."""
    s, _ = _cat(pairs)
    if calibration.method != "context":
        return calibration.apply(s)
    contexts, tree_of = _cat_contexts(pairs)
    return calibration.apply(s) * calibration.trust(contexts)[tree_of]


def choose_context_fit(pairs: Sequence[Pairs]) -> cal.Calibration:
    """The context fit, its ridge strength chosen on alternate prompts of `pairs` (so the
    held-out half that picks the method never picks the strength), refitted on all of them."""
    inner_fit, inner_held = split(pairs)

    def fitted(part: Sequence[Pairs], l2: float) -> cal.Calibration:
        s, a = _cat(part)
        contexts, tree_of = _cat_contexts(part)
        return cal.fit_context(s, a, contexts, tree_of, l2)

    if not inner_held:  # one prompt per source: nothing to choose on, the strongest ridge
        losses, best = {}, max(CONTEXT_L2)
    else:
        losses = {l2: scores_of(fitted(inner_fit, l2), inner_held)["log_loss"]
                  for l2 in CONTEXT_L2}
        best = min(CONTEXT_L2, key=lambda l2: (losses[l2], -l2))  # ties: the stronger ridge
    chosen = fitted(pairs, best)
    return cal.Calibration(**{**_fields(chosen), "fitted_on": {
        "l2": best, "l2_inner_log_loss": {str(k): v for k, v in losses.items()}}})


def scores_of(calibration: cal.Calibration, pairs: Sequence[Pairs]) -> dict[str, float]:
    _, a = _cat(pairs)
    p = predict(calibration, pairs)
    return {"log_loss": round(cal.log_loss(p, a), 5), "brier": round(cal.brier(p, a), 5),
            "mean_predicted": round(float(p.mean()), 5), "accept_rate": round(float(a.mean()), 5)}


def fit_calibration(pairs: Sequence[Pairs], method: str = "auto") -> cal.Calibration:
    """Fit on one half, score identity and the fits on the other; keep the best (`auto`) or
    the named method; `auto` keeps the raw confidences (identity) when no fit beats them held
    out. `fitted_on` records counts and the held-out metrics."""
    if method not in METHODS:
        raise TapsError(f"--method '{method}' is unknown; use one of {', '.join(METHODS)}")
    fit_part, held = split(pairs)
    s, a = _cat(fit_part)
    if not held or not s.numel() or not _cat(held)[0].numel():
        raise TapsError("too few calibration pairs to fit and score; raise --prompts or "
                        "--max-new-tokens")
    has_context = _cat_contexts(pairs) is not None
    if method == "context" and not has_context:
        raise TapsError("--method context needs the heads' hidden states, which these pairs "
                        "lack; collect them with confidence.collect")
    names = [method] if method != "auto" else ["temperature", "isotonic"] + (
        ["context"] if has_context else [])
    fits = {name: choose_context_fit(fit_part) if name == "context" else cal.fit(name, s, a)
            for name in names}
    scored = {"identity": cal.IDENTITY, **fits}
    metrics = {name: scores_of(c, held) for name, c in scored.items()}
    # auto: a head already calibrated on held-out data keeps its raw confidences
    candidates = scored if method == "auto" else fits
    best = min(candidates, key=lambda n: (metrics[n]["log_loss"], metrics[n]["brier"]))
    return cal.Calibration(**{**_fields(scored[best]), "fitted_on": {
        **scored[best].fitted_on, "heldout": metrics,
        "chosen_by": "held-out log-loss" if method == "auto" else "--method",
        "pairs": {"fit": int(s.numel()), "heldout": int(_cat(held)[0].numel())},
        "prompts": {"fit": len(fit_part), "heldout": len(held)},
    }})


def _fields(c: cal.Calibration) -> dict:
    return {"method": c.method, "temperature": c.temperature, "x": c.x, "y": c.y,
            "trust_weights": c.trust_weights, "trust_bias": c.trust_bias,
            "trust_default": c.trust_default}


def describe_data(prompts: Sequence[ReplayPrompt], tree: TreeConfig, max_new_tokens: int,
                  seed: int, excluded: dict[str, int | None]) -> dict:
    """What a calibration was fitted on, for taps.json."""
    by_source: dict[str, int] = {}
    for p in prompts:
        by_source[p.benchmark] = by_source.get(p.benchmark, 0) + 1
    return {
        "sources": by_source, "prompt_ids": [p.prompt_id for p in prompts],
        "turns": "first user turn", "max_new_tokens": max_new_tokens, "seed": seed,
        "tree": asdict(tree), "positions": "every position with depth + 1 tokens to come",
        "excluded_training_records": excluded,
        "note": "held out: training-domain prompts, not benchmark prompts, not drawn for "
                "training by any drafter calibrated together",
    }


def write_calibration(folder: str | Path, calibration: cal.Calibration) -> Path:
    """Store `calibration` in the drafter folder's taps.json (atomically; weights untouched)."""
    from dataclasses import replace

    from taps_ray.models.drafter import read_meta, write_meta

    meta = read_meta(folder)
    extra = {**meta.extra, cal.META_KEY: calibration.to_dict()}
    return write_meta(folder, replace(meta, extra=extra))
