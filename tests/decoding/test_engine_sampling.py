"""At temperature > 0 speculative decoding follows the target's distribution exactly.

The joint law of the first spec step's emitted tokens (tokens 2 and 3: the first comes from the
prefill) is compared with the exact law computed from the tiny target by enumeration. The drafter
is an oracle head (tests/accepted.py), so both tokens are usually accepted drafts; the law of long
outputs, over many steps and every strategy, is tested in test_strategies.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.sampling import SamplingParams, logits_to_probs
from tests.accepted import one_layer_target, oracle_drafter
from tests.tiny import tiny_target

VOCAB, PROMPT, TRIALS = 6, [1, 4, 2], 2500


def next_probs(target, prefix: list[int], params: SamplingParams) -> torch.Tensor:  # [V]
    logits = target.model(torch.tensor([prefix])).logits[0, -1]
    return logits_to_probs(logits, params).double()


def exact_pair_law(target, params: SamplingParams, prompt: list[int] = PROMPT
                   ) -> torch.Tensor:  # [V, V] law of (t2, t3)
    law = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    p1 = next_probs(target, prompt, params)
    for t1, t2 in itertools.product(range(VOCAB), repeat=2):
        p2 = next_probs(target, prompt + [t1], params)[t2]
        law[t2] += p1[t1] * p2 * next_probs(target, prompt + [t1, t2], params)
    return law


def p_value(observed: torch.Tensor, expected: torch.Tensor) -> float:
    keep = expected > 1e-9
    if observed[~keep].sum() > 0:
        return 0.0  # a token pair the target can never produce was emitted
    stat = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    dof = torch.tensor((int(keep.sum()) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, stat / 2))


def sampled_pairs(generate) -> torch.Tensor:
    counts = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    for seed in range(TRIALS):
        tokens = generate(seed)
        counts[tokens[1], tokens[2]] += 1
    return counts


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=4, top_p=0.9)],
    ids=["T1", "T0.7-topk4-topp0.9"],
)
def test_speculative_sampling_matches_target_law(params, one_thread):
    target = one_layer_target("llama", vocab=VOCAB, seed=5)  # attention: context matters
    engine = SpeculativeEngine(target, [oracle_drafter(target, 0.03, seed=2)], TreeConfig(8, 2, 3))
    law = exact_pair_law(target, params)
    accepted = []

    def generate(seed):
        result = engine.generate(PROMPT, params, 3, set(), seed=seed)
        accepted.extend(s.accepted for s in result.steps)
        return result.tokens

    counts = sampled_pairs(generate)
    assert p_value(counts, TRIALS * law) > 1e-3
    # power: the same counts reject the law with the two positions swapped
    assert p_value(counts, TRIALS * law.T.contiguous()) < 1e-3
    # both emitted tokens were accepted drafts in most trials (measured 2.7 and 3.0 per trial)
    assert sum(accepted) > 2 * TRIALS and max(accepted) == 3


def test_plain_sampling_matches_target_law():
    params = SamplingParams(temperature=1.0)
    target = tiny_target("llama", vocab=VOCAB, seed=5)
    law = exact_pair_law(target, params)
    counts = sampled_pairs(
        lambda s: generate_plain(target, PROMPT, params, 3, set(), seed=s).tokens
    )
    assert p_value(counts, TRIALS * law) > 1e-3
