"""Strategies: how one or more drafters turn into the single tree the target verifies.

A strategy proposes a tree from the drafter sessions and learns from how much was accepted
(the two-method proposer interface of transformers' candidate generators). New strategies
register themselves with `@register("name")`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.proposer import DrafterSession
from taps_ray.decoding.tree import DraftTree
from taps_ray.errors import TapsError


@dataclass
class Proposal:
    tree: DraftTree
    route: int | None = None  # index of the drafter whose tree is verified (None: combined)
    drafted: list[int] = field(default_factory=list)  # drafters that did work this step


class Strategy:
    """Base: subclasses implement `propose`; `observe` is optional feedback."""

    name = "base"

    def __init__(self, num_drafters: int, **options: object):
        self.num_drafters = num_drafters

    def start(self) -> None:
        """Called once per prompt/turn, before the first step."""

    def propose(self, sessions: list[DrafterSession], tree: TreeConfig) -> Proposal:
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


def make_strategy(name: str, num_drafters: int, **options: object) -> Strategy:
    if name not in _REGISTRY:
        raise TapsError(f"unknown strategy '{name}'; valid: {', '.join(strategy_names())}")
    return _REGISTRY[name](num_drafters, **options)


@register("single")
class Single(Strategy):
    """One drafter's EAGLE-2 tree, verified as is."""

    def __init__(self, num_drafters: int, **options: object):
        super().__init__(num_drafters, **options)
        if num_drafters != 1:
            raise TapsError(f"strategy 'single' takes exactly one drafter, got {num_drafters}")

    def propose(self, sessions: list[DrafterSession], tree: TreeConfig) -> Proposal:
        return Proposal(sessions[0].draft(tree), route=0, drafted=[0])
