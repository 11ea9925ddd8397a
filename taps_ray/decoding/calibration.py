"""Calibrated draft confidences: a drafter's node confidence mapped to its real acceptance.

A node's confidence is exp(cumulative draft log-prob), the drafter's own probability that its
whole path matches the target. Heads trained on different data are not equally honest about it
(a math head is sure of itself on chat too), so confidence routing compares them through each
head's calibration: a monotone map from log-confidence to the probability that the node is
accepted, fitted on held-out replay (`taps_ray/evaluation/confidence.py`) and stored in the
drafter's taps.json under extra["confidence_calibration"]. At T = 0 exactly one root path is
accepted, so the calibrated values of a tree's nodes sum to its expected accepted length.

Three fits, all monotone in s so a surer node never scores lower:
- temperature: p = exp(s / T) on the log-confidence s (one parameter, p(s=0) = 1);
- isotonic: pool-adjacent-violators over s, linearly interpolated between block points;
- context: p = exp(s / T) * sigmoid(b + w . h), where h is the head's own hidden state at the
  newest committed token (the parent feature of its tree). A map of s alone cannot tell which
  domain the text is in, and a specialist is overconfident outside its own (measured in
  docs/results.md); the trust factor, fitted with the temperature, learns where the head's
  confidence can be believed. One factor per tree: every node of it shares h.
Fitting and scoring are pure functions over tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from taps_ray.errors import TapsError

META_KEY = "confidence_calibration"  # where the calibration lives in DrafterMeta.extra
METHODS = ("identity", "temperature", "isotonic", "context")
_EPS = 1e-6  # probability clip of the losses (a p of exactly 0 or 1 would cost infinity)


@dataclass(frozen=True)
class Calibration:
    """A map log-confidence s (<= 0) [, context h] -> acceptance probability, monotone in s."""

    method: str = "identity"  # identity | temperature | isotonic | context
    temperature: float = 1.0  # temperature, context: p = exp(s / temperature) [* trust]
    x: tuple[float, ...] = ()  # isotonic: log-confidence points, strictly increasing
    y: tuple[float, ...] = ()  # isotonic: probability at each point, non-decreasing
    trust_weights: tuple[float, ...] = ()  # context: w, one per hidden unit of the head
    trust_bias: float = 0.0  # context: b
    trust_default: float = 1.0  # context: the trust where no h is known (its fit-data mean)
    fitted_on: dict = field(default_factory=dict, compare=False)  # data and held-out metrics

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise TapsError(f"confidence calibration method '{self.method}' is unknown; "
                            f"use one of {', '.join(METHODS)}")
        if self.method == "temperature" and not self.temperature > 0:
            raise TapsError(f"calibration temperature must be > 0, got {self.temperature}")
        if self.method == "isotonic" and not _valid_points(self.x, self.y):
            raise TapsError("isotonic calibration needs matching x (increasing) and y "
                            "(non-decreasing, in [0, 1]) lists of at least one point")
        if self.method == "context":
            if not self.temperature > 0 or not self.trust_weights:
                raise TapsError("context calibration needs a temperature > 0 and one trust "
                                "weight per hidden unit")
            if not 0.0 < self.trust_default <= 1.0:
                raise TapsError(f"context calibration trust_default must be in (0, 1], got "
                                f"{self.trust_default}")

    def apply(self, scores: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """[n] log-confidences -> [n] probabilities; `context` [d] is the head's hidden state
        at the newest committed token (used by the context fit only)."""
        if self.method in ("temperature", "context"):
            return (scores / self.temperature).exp() * self.trust(context)
        if self.method == "isotonic":
            return _interp(scores, self.x, self.y)
        return scores.exp()

    def trust(self, context: torch.Tensor | None) -> torch.Tensor | float:
        """sigmoid(b + w . h) for h [..., d] -> [...]; 1 for fits without a context term."""
        if self.method != "context":
            return 1.0
        if context is None:
            return self.trust_default
        if context.shape[-1] != len(self.trust_weights):
            raise TapsError(f"context calibration has {len(self.trust_weights)} trust weights "
                            f"but the head's hidden state has {context.shape[-1]} units; rerun "
                            "taps-ray drafter calibrate on this drafter")
        w = torch.tensor(self.trust_weights, dtype=torch.float64, device=context.device)
        return torch.sigmoid(context.double() @ w + self.trust_bias)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        if self.method in ("temperature", "context"):
            out["temperature"] = self.temperature
        if self.method == "isotonic":
            out["x"], out["y"] = list(self.x), list(self.y)
        if self.method == "context":
            out.update(trust_weights=list(self.trust_weights), trust_bias=self.trust_bias,
                       trust_default=self.trust_default)
        return {**out, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, raw: object) -> Calibration:
        if not isinstance(raw, dict):
            raise TapsError(f"drafter {META_KEY} must be a mapping, got {type(raw).__name__}; "
                            "rerun taps-ray drafter calibrate")
        try:
            return cls(method=raw.get("method", "identity"),
                       temperature=float(raw.get("temperature", 1.0)),
                       x=tuple(float(v) for v in raw.get("x", ())),
                       y=tuple(float(v) for v in raw.get("y", ())),
                       trust_weights=tuple(float(v) for v in raw.get("trust_weights", ())),
                       trust_bias=float(raw.get("trust_bias", 0.0)),
                       trust_default=float(raw.get("trust_default", 1.0)),
                       fitted_on=dict(raw.get("fitted_on") or {}))
        except (TypeError, ValueError) as err:
            raise TapsError(f"drafter {META_KEY} is damaged ({err}); rerun taps-ray drafter "
                            "calibrate") from None


IDENTITY = Calibration()


def calibration_of(meta: object) -> Calibration:
    """The calibration recorded in a DrafterMeta (identity when it has none: old drafters)."""
    extra = getattr(meta, "extra", None) or {}
    raw = extra.get(META_KEY)
    return IDENTITY if raw is None else Calibration.from_dict(raw)


def session_context(session: object) -> torch.Tensor | None:
    """The head's hidden state at the newest committed token ([d]; None for sessions without
    one, e.g. prompt lookup): what a context calibration conditions on. Read after `draft`."""
    return getattr(session, "last_hidden", None)


def session_calibration(session: object) -> Calibration:
    """The calibration of the drafter a session runs (sessions expose `drafter`; a drafter
    without metadata, as a remote stand-in, is uncalibrated)."""
    return calibration_of(getattr(getattr(session, "drafter", None), "meta", None))


def _valid_points(x: tuple[float, ...], y: tuple[float, ...]) -> bool:
    if not x or len(x) != len(y):
        return False
    increasing = all(b > a for a, b in zip(x, x[1:], strict=False))
    monotone = all(b >= a for a, b in zip(y, y[1:], strict=False))
    return increasing and monotone and all(0.0 <= v <= 1.0 for v in y)


def _interp(s: torch.Tensor, xs: tuple[float, ...], ys: tuple[float, ...]) -> torch.Tensor:
    """Piecewise-linear through (xs, ys), constant beyond the ends (s [n] -> [n])."""
    x = torch.tensor(xs, dtype=s.dtype, device=s.device)
    y = torch.tensor(ys, dtype=s.dtype, device=s.device)
    if x.numel() == 1:
        return y.expand_as(s).clone()
    s = s.clamp(x[0], x[-1])
    hi = torch.searchsorted(x, s, right=True).clamp(1, x.numel() - 1)
    x0, x1, y0, y1 = x[hi - 1], x[hi], y[hi - 1], y[hi]
    return y0 + (y1 - y0) * (s - x0) / (x1 - x0)


# ---- fitting: (log-confidence, accepted) pairs -> Calibration --------------------------------


# Losses run in numpy: single-threaded, so a fit's many small evaluations do not stall on
# thread hand-offs when the CPU is shared.


def log_loss(p: torch.Tensor | np.ndarray, accepted: torch.Tensor | np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities p [n] against 0/1 labels [n]."""
    p, a = np.clip(_np(p), _EPS, 1 - _EPS), _np(accepted)
    return float(-(a * np.log(p) + (1 - a) * np.log1p(-p)).mean())


def brier(p: torch.Tensor | np.ndarray, accepted: torch.Tensor | np.ndarray) -> float:
    """Mean squared error of probabilities p [n] against 0/1 labels [n]."""
    return float(((_np(p) - _np(accepted)) ** 2).mean())


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else x


def fit_temperature(scores: torch.Tensor, accepted: torch.Tensor) -> Calibration:
    """T minimising the log-loss of exp(s / T) (golden-section search on log T in [1e-2, 1e2];
    the loss is unimodal in log T for s <= 0)."""
    s, a = _np(scores), _np(accepted)

    def loss(log_t: float) -> float:
        return log_loss(np.exp(s / math.exp(log_t)), a)

    lo, hi = math.log(1e-2), math.log(1e2)
    ratio = (math.sqrt(5) - 1) / 2
    m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    f1, f2 = loss(m1), loss(m2)
    for _ in range(40):  # one new evaluation per round; the bracket shrinks to ~1e-8
        if f1 < f2:
            hi, m2, f2 = m2, m1, f1
            m1 = hi - ratio * (hi - lo)
            f1 = loss(m1)
        else:
            lo, m1, f1 = m1, m2, f2
            m2 = lo + ratio * (hi - lo)
            f2 = loss(m2)
    return Calibration("temperature", temperature=round(math.exp((lo + hi) / 2), 6))


def fit_isotonic(scores: torch.Tensor, accepted: torch.Tensor, max_bins: int = 256
                 ) -> Calibration:
    """Isotonic regression of accepted on s by pool-adjacent-violators.

    Pairs are first pooled into at most `max_bins` bins of consecutive s (equal weight), so the
    stored map stays small; each PAV block becomes two points (its first and last bin's mean s),
    one if it holds a single bin.
    """
    sx, wx, yx = _bins(scores.double(), accepted.double(), max_bins)
    blocks = pav(yx, wx)
    xs: list[float] = []
    ys: list[float] = []
    for first, last, value in blocks:
        for i in dict.fromkeys((first, last)):  # one point when first == last
            xs.append(round(float(sx[i]), 6))
            ys.append(round(min(max(value, 0.0), 1.0), 6))
    xs, ys = _dedupe(xs, ys)
    return Calibration("isotonic", x=tuple(xs), y=tuple(ys))


def pav(values: torch.Tensor, weights: torch.Tensor) -> list[tuple[int, int, float]]:
    """Pool adjacent violators: the non-decreasing fit of `values` [n] under `weights` [n]
    minimising the weighted squared error, as blocks (first index, last index, value)."""
    blocks: list[list[float]] = []  # [first, last, weighted sum, weight]
    for i, (v, w) in enumerate(zip(values.tolist(), weights.tolist(), strict=True)):
        blocks.append([i, i, v * w, w])
        while len(blocks) > 1 and blocks[-2][2] / blocks[-2][3] >= blocks[-1][2] / blocks[-1][3]:
            last = blocks.pop()
            blocks[-1][1] = last[1]
            blocks[-1][2] += last[2]
            blocks[-1][3] += last[3]
    return [(int(f), int(t), s / w) for f, t, s, w in blocks]


def _bins(s: torch.Tensor, a: torch.Tensor, max_bins: int
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unique s values pooled into <= max_bins consecutive bins: (mean s, count, mean label)."""
    uniq, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    hits = torch.zeros_like(uniq).index_add_(0, inverse, a)
    sums = uniq * counts
    if uniq.numel() <= max_bins:
        bin_of = torch.arange(uniq.numel())
    else:  # bin b takes the unique values whose cumulative weight falls in its equal share
        cum = counts.cumsum(0).double() - counts.double() / 2
        bin_of = (cum / float(counts.sum()) * max_bins).long().clamp(max=max_bins - 1)
        _, bin_of = torch.unique_consecutive(bin_of, return_inverse=True)
    n = int(bin_of.max()) + 1
    w = torch.zeros(n, dtype=s.dtype).index_add_(0, bin_of, counts.double())
    mean_s = torch.zeros(n, dtype=s.dtype).index_add_(0, bin_of, sums) / w
    mean_a = torch.zeros(n, dtype=s.dtype).index_add_(0, bin_of, hits) / w
    return mean_s, w, mean_a


def _dedupe(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """Drop points whose rounded x repeats the previous one (keep x strictly increasing)."""
    out_x, out_y = [xs[0]], [ys[0]]
    for x, y in zip(xs[1:], ys[1:], strict=True):
        if x > out_x[-1]:
            out_x.append(x)
            out_y.append(max(y, out_y[-1]))
    return out_x, out_y


def fit_context(scores: torch.Tensor, accepted: torch.Tensor, contexts: torch.Tensor,
                tree_of: torch.Tensor, l2: float = 1e-2) -> Calibration:
    """Temperature and trust factor by maximum likelihood: p = exp(s / T) * sigmoid(b + w . h).

    scores, accepted [n] per node; contexts [trees, d] the head's hidden state per tree;
    tree_of [n] each node's tree. h is standardized on these data for the fit (ridge penalty
    `l2` on the standardized w, so no unit dominates by its scale) and the map is folded back
    to raw h for storage. L-BFGS on the mean node log-loss, in float64.
    """
    h = contexts.double()
    mu, sd = h.mean(0), h.std(0).clamp_min(1e-6)
    z = (h - mu) / sd
    s, a, idx = scores.double(), accepted.double(), tree_of.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t, bias, w], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")
    top = math.log1p(-_EPS)

    def loss() -> torch.Tensor:
        opt.zero_grad()
        logp = (s / log_t.exp() + torch.nn.functional.logsigmoid(z @ w + bias)[idx]).clamp(
            max=top)
        nll = -(a * logp + (1 - a) * torch.log1p(-logp.exp())).mean()
        total = nll + l2 * (w * w).sum() / z.shape[1]
        total.backward()
        return total

    opt.step(loss)
    log_t, bias, w = log_t.detach(), bias.detach(), w.detach()
    with torch.no_grad():
        raw_w = w / sd
        raw_b = bias - (raw_w * mu).sum()
        default = float(torch.sigmoid(h @ raw_w + raw_b).mean())
    return Calibration("context", temperature=round(float(log_t.exp()), 6),
                       trust_weights=tuple(float(f"{float(v):.6g}") for v in raw_w),
                       trust_bias=round(float(raw_b), 6),
                       trust_default=round(min(max(default, _EPS), 1.0), 6))


def fit(method: str, scores: torch.Tensor, accepted: torch.Tensor) -> Calibration:
    """One fit of log-confidences alone by name (identity fits nothing; the context fit needs
    the trees' hidden states: `fit_context`)."""
    if method == "temperature":
        return fit_temperature(scores, accepted)
    if method == "isotonic":
        return fit_isotonic(scores, accepted)
    if method == "identity":
        return IDENTITY
    if method == "context":
        raise TapsError("the context calibration is fitted from the trees' hidden states; "
                        "use fit_context (taps-ray drafter calibrate collects them)")
    raise TapsError(f"calibration method '{method}' is unknown; use one of {', '.join(METHODS)}")
