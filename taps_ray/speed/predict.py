"""Predicted decoding speed of a configuration from a cost profile: pure arithmetic, no timing.

    step seconds     = drafting + Tv(verify_tokens) + (tau - 1) * logits_row + overheads
    tokens/s         = tau / step seconds            (plain decoding: 1 / T1)

Drafting counts the drafters that actually draft each step: `single`, `average` and `bandit` one
drafter; `route-*/step` and `merged` all N (an upper bound: `draft_many` batches their LM heads);
`route-*/prompt` one after its warm-up steps. Routing adds N tree scorings per step, merging N
tree merges; every step adds the engine's own bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from taps_ray.config.schema import TreeConfig
from taps_ray.errors import TapsError
from taps_ray.speed.profile import CostProfile

STRATEGIES = ("single", "average", "route-confidence", "route-entropy", "route-learned", "merged",
              "bandit")


def plain_tokens_per_s(profile: CostProfile) -> float:
    """Plain autoregressive decoding: one token per T1."""
    return 1.0 / profile.t1_s


def parse_strategy(label: str) -> tuple[str, str]:
    """`route-confidence/prompt` -> (route-confidence, prompt); `average@0.25` -> (average, '')."""
    name, _, mode = label.split("@", 1)[0].partition("/")
    if name not in STRATEGIES:
        raise TapsError(f"unknown strategy '{label}' for speed prediction; valid: "
                        f"{', '.join(STRATEGIES)} (with /step, /prompt, /sum or /matched)")
    if name.startswith("route-") and mode not in ("", "step", "prompt"):
        raise TapsError(f"strategy '{label}' takes /step or /prompt")
    if name == "merged" and mode not in ("", "sum", "matched"):
        raise TapsError(f"strategy '{label}' takes /sum or /matched")
    return name, mode or ("step" if name.startswith("route-") else "")


def draft_seconds(profile: CostProfile, drafters: Sequence[str], strategy: str,
                  tree: TreeConfig) -> float:
    """Expected drafting seconds of one step (see the module docstring for who drafts)."""
    if not drafters:
        raise TapsError(f"strategy '{strategy}' needs at least one drafter to predict its speed")
    name, mode = parse_strategy(strategy)
    costs = [profile.draft_s(d, tree) for d in drafters]
    every_step = name == "merged" or (name.startswith("route-") and mode == "step")
    return sum(costs) if every_step else sum(costs) / len(costs)


def overhead_seconds(profile: CostProfile, num_drafters: int, strategy: str) -> float:
    """Routing or merging work of one step plus the engine's per-step bookkeeping."""
    name, mode = parse_strategy(strategy)
    extra = profile.overhead_s.get("step", 0.0)
    if name.startswith("route-") and mode == "step":
        extra += num_drafters * profile.overhead_s.get("route", 0.0)
    elif name == "merged":
        extra += num_drafters * profile.overhead_s.get("merge", 0.0)
    return extra


def step_seconds(
    profile: CostProfile,
    drafters: list[str],
    strategy: str,
    tree: TreeConfig,
    verify_tokens: float,
    tau: float = 1.0,
    kv_len: int | None = None,
) -> float:
    """Seconds of one speculative step. `verify_tokens` counts the root; `tau` adds the extra
    LM-head rows verification computes for accepted tokens (tau 1: none)."""
    if verify_tokens < 1:
        raise TapsError(f"verify_tokens must be >= 1 (the root counts), got {verify_tokens}")
    rows = max(tau - 1.0, 0.0) * profile.overhead_s.get("logits_row", 0.0)
    return (
        draft_seconds(profile, drafters, strategy, tree)
        + profile.tv(verify_tokens, kv_len)
        + rows
        + overhead_seconds(profile, len(drafters), strategy)
    )


def predicted_tokens_per_s(
    profile: CostProfile,
    tau: float,
    drafters: list[str],
    strategy: str,
    tree: TreeConfig,
    verify_tokens: float,
    kv_len: int | None = None,
) -> float:
    """Tokens committed per step / seconds per step."""
    if tau < 1:
        raise TapsError(f"tau must be >= 1 (every step commits its bonus token), got {tau}")
    return tau / step_seconds(profile, drafters, strategy, tree, verify_tokens, tau, kv_len)


@dataclass(frozen=True)
class SpeedCandidate:
    """One configuration to rank: its drafters, strategy label, tree and replayed tau."""

    label: str
    drafters: tuple[str, ...]
    strategy: str
    tree: TreeConfig
    verify_tokens: float  # mean tree tokens + root verified per step
    tau: float


PLAIN = "plain"  # label of plain decoding among ranked candidates


def rank_by_speed(profile: CostProfile, candidates: Sequence[SpeedCandidate],
                  include_plain: bool = True) -> list[tuple[str, float]]:
    """(label, predicted tokens/s), fastest first; plain decoding is a candidate too."""
    if not candidates:
        raise TapsError("no candidate configurations to rank by predicted speed; give at least "
                        "one drafter/strategy/tree with a replayed tau")
    ranked = [
        (c.label, predicted_tokens_per_s(profile, c.tau, list(c.drafters), c.strategy, c.tree,
                                         c.verify_tokens))
        for c in candidates
    ]
    if include_plain:
        ranked.append((PLAIN, plain_tokens_per_s(profile)))
    return sorted(ranked, key=lambda item: -item[1])
