"""Quickstart profiles: how big each stage of the study is on the embedded default target.

`smoke` is first contact and CI (<= 10 minutes on 2 CPU cores); `default` is the study at CPU
size (<= 60 minutes). Both train the same six drafters (math, chat and mixed data x EAGLE-2 and
HASS) and evaluate the same strategies; only sizes differ. The sweep reuses the specialists'
data specs (math fraction 0, .5, 1 are exactly the chat, mixed and math data), so its trials
read the feature caches the specialists built instead of extracting again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from taps_ray.config.schema import BENCHMARKS, TreeConfig
from taps_ray.errors import TapsError
from taps_ray.evaluation.speed_select import chain, tree_grid

# the three training mixtures; the strings equal distributed.sweep.mixture_for(1, 0, .5), which
# makes the sweep's data specs (and so their feature caches) the specialists' own
DOMAINS = {"math": "math=1.0", "chat": "chat=1.0", "mix": "math=0.5,chat=0.5"}
METHODS = ("eagle2", "hass")
# evaluated on every specialist pair: the study's strategies plus our bandit
STRATEGIES = ["single", "average", "route-confidence/step", "route-entropy/step",
              "merged/sum", "merged/matched", "bandit"]


@dataclass(frozen=True)
class Profile:
    """Sizes of one quickstart run. Every field says what it scales."""

    name: str
    total: int  # conversations drawn per training mixture (math, chat, mix)
    max_length: int  # tokens per rendered training conversation
    epochs: int  # training passes per drafter
    lr: float  # peak AdamW learning rate (high: few steps on CPU)
    draft_vocab_size: int  # reduced draft vocabulary (cheaper head and training on CPU)
    tree: TreeConfig  # draft tree verified per step
    max_new_tokens: int  # per prompt turn, replay and live
    replay_prompts: int  # T = 0 replay prompts per benchmark (4 benchmarks)
    live_prompts: int  # T = 1 live prompts per live benchmark
    live_benchmarks: list[str]  # the smaller live subset
    live_strategies: list[str]  # strategies decoded live at T = 1 (plus plain decoding)
    live_methods: list[str]  # specialist pairs decoded live (eagle2 and/or hass)
    sweep_fractions: list[float]  # math fractions the Tune sweep trains
    sweep_epochs: int  # epochs per sweep trial
    sweep_prompts: int  # replay prompts per benchmark after each sweep epoch
    # tree shapes replayed to rank configurations by predicted tokens/s (speed stage)
    speed_trees: list[TreeConfig] = field(default_factory=list)
    speed_top: int = 3  # best predicted configurations confirmed live against plain decoding
    seed: int = 1  # picks benchmark prompts (training draws use seed 0)
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))


PROFILES = {
    "smoke": Profile(
        name="smoke", total=24, max_length=160, epochs=1, lr=1e-3, draft_vocab_size=2048,
        tree=TreeConfig(total_tokens=16, depth=3, top_k=4), max_new_tokens=16,
        replay_prompts=2, live_prompts=1, live_benchmarks=["gsm8k"],
        live_strategies=["single", "merged/sum", "route-confidence/step"],
        live_methods=["eagle2", "hass"],
        sweep_fractions=[0.0, 1.0], sweep_epochs=1, sweep_prompts=1,
        speed_trees=[chain(2), TreeConfig(total_tokens=16, depth=3, top_k=4)], speed_top=2,
    ),
    "default": Profile(
        name="default", total=400, max_length=256, epochs=2, lr=5e-4, draft_vocab_size=4096,
        tree=TreeConfig(total_tokens=60, depth=5, top_k=10), max_new_tokens=64,
        replay_prompts=3, live_prompts=1, live_benchmarks=["gsm8k", "mt_bench"],
        live_strategies=list(STRATEGIES), live_methods=["eagle2"],
        sweep_fractions=[0.0, 0.5, 1.0], sweep_epochs=1, sweep_prompts=2,
        speed_trees=tree_grid(TreeConfig(total_tokens=60, depth=5, top_k=10)), speed_top=3,
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise TapsError(f"--profile '{name}' is unknown; use one of {', '.join(PROFILES)}")
    return PROFILES[name]
