"""Strategies: how one or more drafters turn into the single tree the target verifies.

A strategy proposes a tree from the drafter sessions and learns from how much was accepted
(the two-method proposer interface of transformers' candidate generators). New strategies
register themselves with `@register("name")`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.calibration import Calibration, session_calibration, session_context
from taps_ray.decoding.proposer import Session, draft_many
from taps_ray.decoding.router import RoutingScore, check_fitted_together, drafter_routing_score
from taps_ray.decoding.tree import DraftTree, merge_trees
from taps_ray.errors import TapsError


@dataclass
class Proposal:
    tree: DraftTree
    route: int | None = None  # index of the drafter whose tree is verified (None: combined)
    drafted: list[int] = field(default_factory=list)  # drafters that did work this step


class Strategy:
    """Base: subclasses implement `propose`; `observe` is optional feedback."""

    name = "base"
    reads_hidden_states = False  # True: needs each session's drafter and hidden state in process

    def __init__(self, num_drafters: int, **options: object):
        self.num_drafters = num_drafters

    @classmethod
    def prepare_drafters(cls, drafters: list, **options: object) -> list:
        """The drafters the sessions run (weight averaging turns N into one)."""
        return drafters

    def start(self) -> None:
        """Called once per prompt/turn, before the first step."""

    def propose(self, sessions: Sequence[Session], tree: TreeConfig) -> Proposal:
        raise NotImplementedError

    def observe(self, proposal: Proposal, accepted: int) -> None:
        """Called after verification with the number of accepted draft tokens."""


_REGISTRY: dict[str, Callable[..., Strategy]] = {}


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    def wrap(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def strategy_names() -> list[str]:
    return sorted(_REGISTRY)


def strategy_class(name: str, options: dict | None = None) -> type[Strategy]:
    """The registered class, after checking `options` are ones its constructor takes."""
    if name not in _REGISTRY:
        raise TapsError(f"unknown strategy '{name}'; valid: {', '.join(strategy_names())}")
    kind = _REGISTRY[name]
    valid = [p for p in inspect.signature(kind.__init__).parameters
             if p not in ("self", "num_drafters", "options")]
    unknown = [k for k in options or {} if k not in valid]
    if unknown:
        takes = ", ".join(valid) if valid else "no options"
        raise TapsError(f"strategy '{name}' has no option '{unknown[0]}' (it takes: {takes})")
    return kind


def make_strategy(name: str, num_drafters: int, **options: object) -> Strategy:
    return strategy_class(name, options)(num_drafters, **options)


@register("single")
class Single(Strategy):
    """One drafter's EAGLE-2 tree, verified as is."""

    def __init__(self, num_drafters: int, **options: object):
        super().__init__(num_drafters, **options)
        if num_drafters != 1:
            raise TapsError(f"strategy 'single' takes exactly one drafter, got {num_drafters}")

    def propose(self, sessions: Sequence[Session], tree: TreeConfig) -> Proposal:
        return Proposal(sessions[0].draft(tree), route=0, drafted=[0])


@register("average")
class Average(Single):
    """Weight space: one drafter whose parameters are the weighted mean of the N given."""

    def __init__(self, num_drafters: int, weights: Sequence[float] | None = None):
        super().__init__(num_drafters)  # sessions hold the one averaged drafter

    @classmethod
    def prepare_drafters(cls, drafters: list, weights: Sequence[float] | None = None) -> list:
        from taps_ray.training.averaging import average_drafters

        weightless = [d.meta.name for d in drafters if not isinstance(d, torch.nn.Module)]
        if weightless:
            raise TapsError(f"strategy 'average' combines drafter weights and '{weightless[0]}' "
                            "has none; use merged, route-confidence or bandit with it")
        return [average_drafters(drafters, weights)]


def tree_confidence(tree: DraftTree, calibration: Calibration | None = None,
                    context: torch.Tensor | None = None) -> float:
    """Mean node confidence, confidence = exp(cumulative draft log-prob); with a `calibration`
    each node's confidence is first mapped to its drafter's acceptance probability (`context`:
    the drafter's hidden state at the tree's root, for context calibrations)."""
    if not tree.size:
        return 0.0
    if calibration is None:
        return float(tree.scores.exp().mean())
    return float(calibration.apply(tree.scores, context).mean())


def tree_entropy(tree: DraftTree) -> float:
    """Mean draft entropy over the nodes (lower = surer)."""
    return float(tree.entropies.mean()) if tree.size else float("inf")


class _Router(Strategy):
    """Every drafter drafts; the tree with the best metric is verified.

    granularity `step` decides every step; `prompt` decides once per prompt/turn from the
    first `warmup_steps` steps (mean metric), then drafts with the winner only.
    """

    higher_is_better = True

    def __init__(self, num_drafters: int, granularity: str = "step", warmup_steps: int = 2):
        super().__init__(num_drafters)
        if granularity not in ("step", "prompt"):
            raise TapsError(f"granularity must be 'step' or 'prompt', got '{granularity}'")
        if int(warmup_steps) < 1:
            raise TapsError(f"warmup_steps must be >= 1, got {warmup_steps}")
        self.granularity, self.warmup_steps = granularity, int(warmup_steps)

    def metric(self, tree: DraftTree, session: Session) -> float:
        """Score of `tree`, drafted by `session`."""
        raise NotImplementedError

    def start(self) -> None:
        self.totals = [0.0] * self.num_drafters
        self.seen = 0
        self.winner: int | None = None

    def propose(self, sessions: Sequence[Session], tree: TreeConfig) -> Proposal:
        if self.winner is not None:
            return Proposal(sessions[self.winner].draft(tree), self.winner, [self.winner])
        trees = draft_many(sessions, tree)
        values = [self.metric(t, s) for t, s in zip(trees, sessions, strict=True)]
        best = _best(values, self.higher_is_better)
        if self.granularity == "prompt":
            self.totals = [a + v for a, v in zip(self.totals, values, strict=True)]
            self.seen += 1
            if self.seen >= self.warmup_steps:
                self.winner = _best(self.totals, self.higher_is_better)
        return Proposal(trees[best], best, list(range(len(sessions))))


@register("route-confidence")
class RouteConfidence(_Router):
    """Confidences of different heads are compared through each head's calibration (stored
    with the drafter by `taps-ray drafter calibrate`; identity for drafters without one)."""

    def start(self) -> None:
        super().start()
        self.calibrations: dict[int, tuple[Session, Calibration]] = {}  # id -> (session, its)

    def metric(self, tree: DraftTree, session: Session) -> float:
        known = self.calibrations.get(id(session))
        if known is None or known[0] is not session:  # parsed once per prompt and session
            known = self.calibrations[id(session)] = (session, session_calibration(session))
        return tree_confidence(tree, known[1], session_context(session))


@register("route-learned")
class RouteLearned(_Router):
    """Each head's tree is scored by the routing score fitted jointly for these heads (stored
    with each drafter by `taps-ray drafter fit-router`; decoding/router.py): confidence and the
    head's hidden state, weighed by accepted tokens lost to the best head on held-out replay."""

    reads_hidden_states = True  # drafter actors do not return them (distributed/actors.py)

    @classmethod
    def prepare_drafters(cls, drafters: list, **options: object) -> list:
        """Heads not fitted together fail when the engine is built, not at the first step."""
        if len(drafters) > 1:
            check_fitted_together([drafter_routing_score(d) for d in drafters])
        return drafters

    def start(self) -> None:
        super().start()
        self.scores: dict[int, tuple[Session, RoutingScore]] = {}  # id -> (session, its score)

    def propose(self, sessions: Sequence[Session], tree: TreeConfig) -> Proposal:
        unseen = any(self.scores.get(id(s), (None,))[0] is not s for s in sessions)
        if unseen and len(sessions) > 1:  # one head is verified as is: nothing to route
            fitted = check_fitted_together([drafter_routing_score(getattr(s, "drafter", None))
                                            for s in sessions])
            self.scores = {id(s): (s, f) for s, f in zip(sessions, fitted, strict=True)}
        return super().propose(sessions, tree)

    def metric(self, tree: DraftTree, session: Session) -> float:
        known = self.scores.get(id(session))
        return 0.0 if known is None else known[1].score(tree.scores, session_context(session))


@register("route-entropy")
class RouteEntropy(_Router):
    higher_is_better = False

    def metric(self, tree: DraftTree, session: Session) -> float:
        return tree_entropy(tree)


@register("merged")
class Merged(Strategy):
    """Trie union of all drafters' trees; budget `sum` keeps it whole, `matched` reranks it to
    one tree's `total_tokens` (same verify cost as a single drafter)."""

    def __init__(self, num_drafters: int, budget: str = "sum"):
        super().__init__(num_drafters)
        if budget not in ("sum", "matched"):
            raise TapsError(f"budget must be 'sum' or 'matched', got '{budget}'")
        self.budget = budget

    def propose(self, sessions: Sequence[Session], tree: TreeConfig) -> Proposal:
        trees = draft_many(sessions, tree)
        total = tree.total_tokens if self.budget == "matched" else None
        return Proposal(merge_trees(trees, total), None, list(range(len(sessions))))


@register("bandit")
class Bandit(Strategy):
    """UCB1 over drafters within a prompt: only the chosen drafter drafts each step.

    Reward = accepted draft tokens / tree depth (in [0, 1]). Drafters that sit out catch up
    on the committed tokens in one batched call when next chosen.
    """

    def __init__(self, num_drafters: int, exploration: float = 0.5):
        super().__init__(num_drafters)
        if float(exploration) < 0:
            raise TapsError(f"exploration must be >= 0, got {exploration}")
        self.exploration = float(exploration)
        self.depth = 1

    def start(self) -> None:
        self.pulls = [0] * self.num_drafters
        self.rewards = [0.0] * self.num_drafters

    def choose(self) -> int:
        untried = [i for i, n in enumerate(self.pulls) if n == 0]
        if untried:
            return untried[0]
        total = sum(self.pulls)
        ucb = [
            r / n + self.exploration * math.sqrt(math.log(total) / n)
            for r, n in zip(self.rewards, self.pulls, strict=True)
        ]
        return _best(ucb, True)

    def propose(self, sessions: Sequence[Session], tree: TreeConfig) -> Proposal:
        self.depth = tree.depth + 1
        pick = self.choose()
        return Proposal(sessions[pick].draft(tree), pick, [pick])

    def observe(self, proposal: Proposal, accepted: int) -> None:
        self.pulls[proposal.route] += 1
        self.rewards[proposal.route] += accepted / self.depth


def _best(values: Sequence[float], higher: bool) -> int:
    """Index of the best value; ties go to the lower index (deterministic routing)."""
    order = range(len(values))
    return max(order, key=lambda i: (values[i] if higher else -values[i], -i))
