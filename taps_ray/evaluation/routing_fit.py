"""Fit the routing scores of heads routed together (`taps-ray drafter fit-router`).

Every head drafts its tree at every position of the same held-out prompts (the pairs of
`taps-ray drafter calibrate`: evaluation/confidence.py), so each position has one accepted
length per head. A softmax over the heads' scores (decoding/router.py) is fitted to minimise the
expected accepted tokens lost to the best head at that position, plus a ridge on the hidden-state
weights (hidden states standardised per unit on the fit data, folded back into the stored
weights). Half the prompts (alternate per source) fit, the other half score; the ridge is chosen
on alternate prompts of the fit half, so the held-out figures stored with the fit (routing
shares per source and accepted tokens per position, against each single head, raw and
calibrated confidence routing and the oracle) are out of sample.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taps_ray.decoding import calibration as cal
from taps_ray.decoding.router import RoutingScore
from taps_ray.errors import TapsError
from taps_ray.evaluation.confidence import Pairs, predict, split

L2S = (1e-3, 1e-2, 1e-1, 1.0)  # ridge strengths tried (standardised hidden units)


@dataclass
class Positions:
    """Per-position table of K heads over some prompts."""

    accepted: torch.Tensor  # [T, K] accepted draft tokens of each head's tree
    log_confidence: torch.Tensor  # [T, K] log mean node confidence of each tree
    hidden: list[torch.Tensor]  # K x [T, d_k] each head's hidden state at the root
    sources: list[str]  # [T] the prompt's source
    calibrated: torch.Tensor | None = None  # [T, K] mean calibrated node confidence


def positions(heads: Sequence[Sequence[Pairs]],
              calibrations: Sequence[cal.Calibration] | None = None) -> Positions:
    """The table of `heads` (one list of per-prompt Pairs per head, same prompts in order)."""
    if len(heads) < 2 or len({len(h) for h in heads}) != 1:
        raise TapsError("routing needs two or more heads' pairs over the same prompts")
    acc, conf, hid, sources, calibrated = [], [], [[] for _ in heads], [], []
    for prompt in zip(*heads, strict=True):
        trees = {p.contexts.shape[0] for p in prompt}
        if len(trees) != 1 or {p.source for p in prompt} != {prompt[0].source}:
            raise TapsError("the heads' pairs do not cover the same positions; collect them "
                            "on the same prompts with one tree")
        n = trees.pop()
        acc.append(torch.stack([_per_tree(p, p.accepted, n, "sum") for p in prompt], 1))
        conf.append(torch.stack([_per_tree(p, p.scores.exp(), n, "mean").clamp_min(1e-13).log()
                                 for p in prompt], 1))
        if calibrations is not None:
            calibrated.append(torch.stack([_per_tree(p, predict(c, [p]), n, "mean")
                                           for p, c in zip(prompt, calibrations, strict=True)],
                                          1))
        for k, p in enumerate(prompt):
            hid[k].append(p.contexts)
        sources += [prompt[0].source] * n
    return Positions(torch.cat(acc), torch.cat(conf), [torch.cat(h) for h in hid], sources,
                     torch.cat(calibrated) if calibrated else None)


def _per_tree(p: Pairs, values: torch.Tensor, n: int, how: str) -> torch.Tensor:
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, p.tree_of, values.double())
    return sums if how == "sum" else sums / torch.bincount(p.tree_of, minlength=n).clamp_min(1)


@dataclass
class Fitted:
    bias: torch.Tensor  # [K]
    confidence_weight: torch.Tensor  # [K]
    weights: list[torch.Tensor]  # K x [d_k], on raw (unstandardised) hidden states

    def scores(self, table: Positions) -> torch.Tensor:
        """[T, K] routing scores."""
        return torch.stack([self.bias[k] + self.confidence_weight[k] * table.log_confidence[:, k]
                            + table.hidden[k] @ self.weights[k]
                            for k in range(len(self.weights))], 1)


def fit(table: Positions, l2: float, max_iter: int = 300) -> Fitted:
    """Minimise mean expected regret of a softmax router + l2 * |w|^2 (standardised units)."""
    k_heads = table.accepted.shape[1]
    mean = [h.mean(0) for h in table.hidden]
    std = [h.std(0, unbiased=False).clamp_min(1e-6) for h in table.hidden]
    z = [(h - m) / s for h, m, s in zip(table.hidden, mean, std, strict=True)]
    regret = table.accepted.max(1, keepdim=True).values - table.accepted
    bias = torch.zeros(k_heads, dtype=torch.float64, requires_grad=True)
    conf_w = torch.zeros(k_heads, dtype=torch.float64, requires_grad=True)
    w = [torch.zeros(h.shape[1], dtype=torch.float64, requires_grad=True) for h in z]
    opt = torch.optim.LBFGS([bias, conf_w, *w], max_iter=max_iter,
                            line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.stack([bias[k] + conf_w[k] * table.log_confidence[:, k] + z[k] @ w[k]
                              for k in range(k_heads)], 1)
        value = (logits.softmax(1) * regret).sum(1).mean() + l2 * sum((v * v).sum() for v in w)
        value.backward()
        return value

    opt.step(loss)
    with torch.no_grad():
        raw = [v / s for v, s in zip(w, std, strict=True)]
        folded = bias - torch.stack([(r * m).sum() for r, m in zip(raw, mean, strict=True)])
        return Fitted(folded.detach().clone(), conf_w.detach().clone(),
                      [r.detach().clone() for r in raw])


def evaluate(table: Positions, pick: torch.Tensor, names: Sequence[str]) -> dict:
    """Per source: share of positions routed to each head, and accepted tokens per position."""
    out = {}
    for source in sorted(set(table.sources)):
        mask = torch.tensor([s == source for s in table.sources])
        chosen = pick[mask]
        out[source] = {
            "positions": int(mask.sum()),
            "shares": {n: round(float((chosen == k).double().mean()), 4)
                       for k, n in enumerate(names)},
            "accepted_per_position": round(
                float(table.accepted[mask].gather(1, chosen[:, None]).mean()), 4),
        }
    return out


def rules(table: Positions, fitted: Fitted, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each routing rule's pick [T] (argmax; ties to the lower index, as the strategies)."""
    picks = {f"single {n}": torch.full((len(table.sources),), k) for k, n in enumerate(names)}
    picks["raw confidence"] = _argmax(table.log_confidence)
    if table.calibrated is not None:
        picks["calibrated confidence"] = _argmax(table.calibrated)
    picks["learned"] = _argmax(fitted.scores(table))
    picks["oracle"] = _argmax(table.accepted)
    return picks


def _argmax(values: torch.Tensor) -> torch.Tensor:
    """Row argmax, ties to the lowest index (torch.argmax does not promise which)."""
    best = values.max(1, keepdim=True).values
    return (values == best).double().argmax(1)


def _mean_accepted(table: Positions, fitted: Fitted) -> float:
    return float(table.accepted.gather(1, _argmax(fitted.scores(table))[:, None]).mean())


def choose_l2(heads: Sequence[Sequence[Pairs]]) -> tuple[float, dict]:
    """The ridge with the most accepted tokens held out within `heads` (the fit half's
    per-prompt pairs), split again into alternate prompts per source."""
    parts = [split(h) for h in heads]
    if not parts[0][1]:  # one prompt per source: nothing to choose on, the strongest ridge
        return max(L2S), {}
    fit_part, held = positions([p[0] for p in parts]), positions([p[1] for p in parts])
    scored = {l2: _mean_accepted(held, fit(fit_part, l2)) for l2 in L2S}
    best = max(L2S, key=lambda l2: (scored[l2], l2))  # ties: the stronger ridge
    return best, {str(k): round(v, 4) for k, v in scored.items()}


def fit_router(heads: Sequence[Sequence[Pairs]], names: Sequence[str],
               calibrations: Sequence[cal.Calibration] | None = None,
               data: dict | None = None) -> list[RoutingScore]:
    """Each head's routing score, fitted on half the prompts and scored on the other half."""
    if len(set(names)) != len(names):
        raise TapsError(f"heads routed together need distinct names, got {', '.join(names)}; "
                        "rename one in its taps.json")
    parts = [split(h) for h in heads]
    fit_heads, held_heads = [p[0] for p in parts], [p[1] for p in parts]
    if not held_heads[0]:
        raise TapsError("too few prompts to fit and score a router; raise --prompts")
    fit_table = positions(fit_heads, calibrations)
    held_table = positions(held_heads, calibrations)
    if not len(fit_table.sources) or not len(held_table.sources):
        raise TapsError("too few positions to fit and score a router; raise --prompts or "
                        "--max-new-tokens")
    l2, inner = choose_l2(fit_heads)
    fitted = fit(fit_table, l2)
    heldout = {rule: evaluate(held_table, pick, names)
               for rule, pick in rules(held_table, fitted, names).items()}
    about = {**(data or {}), "l2": l2, "l2_inner_accepted_per_position": inner,
             "positions": {"fit": len(fit_table.sources), "heldout": len(held_table.sources)},
             "prompts": {"fit": len(fit_heads[0]), "heldout": len(held_heads[0])},
             "heldout": heldout,
             "objective": "expected accepted tokens lost to the best head (softmax router)"}
    fit_id = hashlib.sha256(json.dumps({"heads": list(names), "l2": l2, "data": data or {}},
                                       sort_keys=True, default=str).encode()).hexdigest()[:16]
    return [RoutingScore(fit_id, tuple(names), float(fitted.bias[k]),
                         float(fitted.confidence_weight[k]),
                         tuple(float(v) for v in fitted.weights[k]), about)
            for k in range(len(names))]


def write_routing_scores(folders: Sequence[str], scores: Sequence[RoutingScore]) -> None:
    """Store each head's routing score in its taps.json (atomically per file; weights
    untouched). Every folder is read first so a bad one stops the run before any is written."""
    from dataclasses import replace

    from taps_ray.decoding.router import META_KEY
    from taps_ray.models.drafter import read_meta, write_meta

    metas = [read_meta(f) for f in folders]
    for folder, meta, score in zip(folders, metas, scores, strict=True):
        write_meta(folder, replace(meta, extra={**meta.extra, META_KEY: score.to_dict()}))
