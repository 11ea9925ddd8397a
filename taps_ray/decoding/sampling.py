"""Sampling helpers: pure functions from target logits to the distribution the engine samples.

`logits_to_probs` reproduces `transformers`' sampling exactly: logits are cast to float32 (as
`generate` does), then the warpers run in the order `generate` builds them
(`_get_logits_processor`): temperature, top-k, top-p; then softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 samples from softmax(logits / T)
    top_p: float = 1.0  # nucleus: keep the smallest top set with mass >= top_p; 1 = off
    top_k: int = 0  # keep only the top_k most likely tokens; 0 = off

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def logits_to_probs(
    logits: torch.Tensor,  # [..., V]
    params: SamplingParams,
) -> torch.Tensor:  # [..., V] float32
    """The distribution `transformers` samples from; greedy params give the one-hot argmax
    (the temperature -> 0 limit), so stochastic verification reduces to greedy."""
    scores = logits.float()
    if params.greedy:
        return _one_hot_argmax(scores)
    scores = scores / params.temperature
    if params.top_k > 0:
        scores = _top_k_filter(scores, params.top_k)
    if params.top_p < 1.0:
        scores = _top_p_filter(scores, params.top_p)
    return scores.softmax(dim=-1)


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a well-spread 64-bit hash of x."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class PositionDraws:
    """One request's randomness, keyed by output position: the uniform for the i-th new token
    depends only on (seed, i).

    Every sampled token is the inverse CDF of its distribution at that uniform, so a seeded
    request emits the same tokens whatever the drafts, the tree sizes, the speed policy's
    choices or the batch it shares: speculative decoding at T > 0 equals plain sampling of the
    same seed token for token (up to float rounding of the target's logits), and verification
    keeps the law of multi-candidate rejection sampling (see verify.verify_stochastic).
    """

    def __init__(self, seed: int, position: int = 0):
        self.seed, self.position = int(seed), int(position)

    def uniform(self, offset: int = 0) -> float:
        """The uniform in [0, 1) of output position `position + offset` (53 random bits)."""
        key = _mix64(_mix64(self.seed & _MASK64) ^ (self.position + offset))
        return (key >> 11) * (1.0 / (1 << 53))

    def advance(self, tokens: int) -> None:
        """`tokens` more output positions were sampled."""
        self.position += int(tokens)

    def take(self, probs: torch.Tensor) -> int:  # probs [V]
        """The token at the current position, then advance by one."""
        token = inverse_cdf(probs, self.uniform())
        self.advance(1)
        return token


def inverse_cdf(
    probs: torch.Tensor,  # [V] non-negative, need not be normalised
    u: float,  # in [0, 1)
) -> int:
    """The token whose cumulative-mass interval (in vocabulary order) holds u * mass: a draw
    from `probs` when u is uniform; a token of zero probability is never returned."""
    cdf = probs.to(torch.float64).cumsum(0)
    mass = float(cdf[-1])
    if not 0 < mass < float("inf"):  # NaN fails too: e.g. logits overflowed by a tiny temperature
        raise ValueError(f"probability tensor is not a distribution (sum {mass})")
    index = int(torch.searchsorted(cdf, torch.tensor([u * mass], dtype=torch.float64),
                                   right=True))
    if index >= probs.numel():  # u * mass rounded up to the mass: the last possible token
        index = int(torch.nonzero(probs > 0)[-1])
    return index


def _one_hot_argmax(scores: torch.Tensor) -> torch.Tensor:  # [..., V] -> [..., V]
    probs = torch.zeros_like(scores)
    return probs.scatter_(-1, scores.argmax(dim=-1, keepdim=True), 1.0)


def _top_k_filter(scores: torch.Tensor, top_k: int) -> torch.Tensor:  # [..., V] -> [..., V]
    """TopKLogitsWarper: drop every score below the k-th largest (ties with it survive)."""
    k = min(top_k, scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]  # [..., 1]
    return scores.masked_fill(scores < kth, -float("inf"))


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:  # [..., V] -> [..., V]
    """TopPLogitsWarper: drop the least likely tokens whose cumulative mass is <= 1 - top_p,
    always keeping the most likely one."""
    sorted_scores, order = torch.sort(scores, descending=False)  # same sort call as HF: same ties
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, -float("inf"))
