"""Prompt lookup: a drafter with no weights (Saxena 2023; transformers' `prompt_lookup_num_tokens`).

The newest n tokens of the sequence (n = max_ngram down to min_ngram) are looked up earlier in
the same sequence (prompt and text so far); the tokens that followed the most recent earlier
occurrence are the draft, a chain. With num_candidates > 1, further distinct continuations (older
occurrences, then shorter n-grams) join it as a small trie under the root.

A continuation may run into the text it is copied for (a repeating cycle): the copy then goes on
copying its own draft, so a cycle of period p drafts num_tokens tokens rather than p.
Verification is the engine's, as for every drafter, so decoding stays lossless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.tree import DraftTree, merge_trees
from taps_ray.errors import TapsError

DRAFTER_NAME = "prompt-lookup"  # the name users, result rows and cost profiles use


def _meta():
    from taps_ray.models.drafter import DrafterMeta

    return DrafterMeta(name=DRAFTER_NAME, method="none")


@dataclass
class PromptLookupDrafter:
    """Options of the n-gram drafter; `make_session` turns it into a `PromptLookupSession`.

    A chain holds min(num_tokens, tree.total_tokens) tokens and the whole trie at most
    tree.total_tokens nodes: total_tokens is the verify budget every drafter keeps, while
    tree.depth and tree.top_k shape EAGLE's expansion rounds, which prompt lookup has none of.
    Scores: every drafted token counts as log(confidence) (cumulative along the path, so a child
    never outscores its parent); with the default 0.5 a lookup chain's first nodes rank with an
    EAGLE head's fairly sure ones when routed or merged, its deep nodes below them.
    """

    max_ngram: int = 3  # longest suffix looked up
    min_ngram: int = 1  # shortest suffix looked up
    num_tokens: int = 10  # longest chain drafted (transformers' prompt_lookup_num_tokens)
    num_candidates: int = 1  # distinct continuations merged into one trie
    confidence: float = 0.5  # per-token draft probability the scores assume
    meta: object = field(default_factory=_meta, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("max_ngram", "min_ngram", "num_tokens", "num_candidates"):
            if int(getattr(self, name)) < 1:
                raise TapsError(f"prompt-lookup option {name} must be >= 1, "
                                f"got {getattr(self, name)}")
        if self.min_ngram > self.max_ngram:
            raise TapsError(f"prompt-lookup min_ngram ({self.min_ngram}) must be <= max_ngram "
                            f"({self.max_ngram})")
        if not 0 < float(self.confidence) < 1:
            raise TapsError(f"prompt-lookup confidence must be in (0, 1), got {self.confidence}")


class NgramIndex:
    """A growing token sequence and, for each n-gram in [min_ngram, max_ngram], where it ended.

    `ends[gram]` lists, ascending, the positions just after each occurrence of `gram` (where its
    continuation starts). Appending m tokens costs O(m * grams); a lookup needs no scan.
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], list[int]] = {}

    def append(self, tokens: list[int]) -> None:
        for token in tokens:
            self.tokens.append(int(token))
            end = len(self.tokens)
            for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                self.ends.setdefault(tuple(self.tokens[end - n :]), []).append(end)

    def continuations(self, num_tokens: int, num_candidates: int = 1) -> list[list[int]]:
        """Up to num_candidates distinct drafts: longest n-gram first, most recent match first."""
        size, out = len(self.tokens), []
        for n in range(min(self.max_ngram, size - 1), self.min_ngram - 1, -1):
            for start in reversed(self.ends.get(tuple(self.tokens[size - n :]), [])):
                if start == size:  # the suffix itself
                    continue
                draft = self._copy(start, num_tokens)
                if draft not in out:
                    out.append(draft)
                if len(out) == num_candidates:
                    return out
        return out

    def _copy(self, start: int, num_tokens: int) -> list[int]:
        """The num_tokens tokens from `start` on; past the end, the copy repeats its own draft."""
        size, draft = len(self.tokens), []
        for i in range(start, start + num_tokens):
            draft.append(self.tokens[i] if i < size else draft[i - size])
        return draft


def ngram_continuations(tokens: list[int], max_ngram: int = 3, min_ngram: int = 1,
                        num_tokens: int = 10, num_candidates: int = 1) -> list[list[int]]:
    """`NgramIndex.continuations` over a whole token list (the pure form, for tests and tools)."""
    index = NgramIndex(max_ngram, min_ngram)
    index.append(tokens)
    return index.continuations(num_tokens, num_candidates)


def chains_tree(chains: list[list[int]], confidence: float, total_tokens: int,
                device: torch.device | str = "cpu") -> DraftTree:
    """The trie of `chains` under the root, node score = depth * log(confidence), cut to the
    total_tokens best nodes (shallow first, earlier chains first on ties). No chain: size 0."""
    logp = math.log(confidence)
    entropy = -(confidence * logp + (1 - confidence) * math.log1p(-confidence))
    trees = [_chain(c, logp, entropy, device) for c in chains if c]
    if not trees:
        return _chain([], logp, entropy, device)
    merged = merge_trees(trees)
    return merged if merged.size <= total_tokens else merge_trees(trees, total_tokens)


def _chain(tokens: list[int], logp: float, entropy: float, device) -> DraftTree:
    n = len(tokens)
    return DraftTree(
        tokens=torch.tensor(tokens, dtype=torch.long, device=device),
        parents=torch.arange(-1, n - 1, dtype=torch.long, device=device),
        scores=logp * torch.arange(1, n + 1, dtype=torch.float32, device=device),
        # a two-outcome law (the copied token, anything else): what "entropy" means here
        entropies=torch.full((n,), entropy, dtype=torch.float32, device=device),
    )


class PromptLookupSession:
    """The session protocol (`Session` in proposer.py) over the committed tokens alone.

    `reset(first_token)` starts a sequence with x_0; `extend` appends the pairs' next tokens
    x_{t+1} (features are not used); `draft` looks the newest tokens up. At T = 0 the tree at
    committed length S depends on tokens 0..S-1 only, so replay equals live decoding exactly.
    """

    def __init__(self, drafter: PromptLookupDrafter, device: torch.device | str = "cpu"):
        self.drafter, self.device = drafter, device
        self.index = NgramIndex(drafter.max_ngram, drafter.min_ngram)

    def reset(self, first_token: int | None = None) -> None:
        self.index = NgramIndex(self.drafter.max_ngram, self.drafter.min_ngram)
        if first_token is not None:
            self.index.append([int(first_token)])

    def extend(self, features: torch.Tensor | None, next_tokens: torch.Tensor) -> None:
        self.index.append(next_tokens.tolist())  # next_tokens [m] = x_{t+1}

    def draft(self, tree: TreeConfig) -> DraftTree:
        d = self.drafter
        chains = self.index.continuations(min(d.num_tokens, tree.total_tokens), d.num_candidates)
        return chains_tree(chains, d.confidence, tree.total_tokens, self.device)


def parse_prompt_lookup(spec: str) -> PromptLookupDrafter | None:
    """'prompt-lookup' or 'prompt-lookup:max_ngram=3,num_tokens=10' -> its drafter; other
    specs (folders, 'untrained') -> None."""
    name, _, options = spec.partition(":")
    if name != DRAFTER_NAME:
        return None
    values: dict[str, object] = {}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _OPTIONS:
            raise TapsError(f"drafter '{spec}': '{item}' is not an option=value pair of "
                            f"prompt-lookup (options: {', '.join(_OPTIONS)})")
        try:
            values[key] = _OPTIONS[key](value.strip())
        except ValueError:
            raise TapsError(f"drafter '{spec}': {key} must be a number, got '{value}'") from None
    return PromptLookupDrafter(**values)


_OPTIONS = {"max_ngram": int, "min_ngram": int, "num_tokens": int, "num_candidates": int,
            "confidence": float}


def load_drafter_spec(spec: str, target, seed: int = 0):
    """A drafter named by the user: a drafter folder, 'untrained' (a random EAGLE head seeded by
    `seed`, for smoke runs) or 'prompt-lookup[:option=value,...]'."""
    from taps_ray.models.drafter import load_drafter, untrained_drafter

    lookup = parse_prompt_lookup(spec)
    if lookup is not None:
        return lookup
    if spec == "untrained":
        drafter = untrained_drafter(target, seed=seed)
        drafter.meta.name, drafter.meta.method = f"untrained{seed}-eagle2", "eagle2"
        return drafter
    return load_drafter(spec, target)
