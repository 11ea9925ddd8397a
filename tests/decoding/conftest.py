"""Decoding fixtures: specialists over-fitted once per session (a few seconds each)."""

from __future__ import annotations

import pytest
import torch

SPECIALIST_NEW = 30  # tokens of greedy continuation the specialists are fitted on


def specialist_prompts() -> tuple[list[list[int]], list[list[int]]]:
    """Two disjoint prompt sets (A, B) of one length, for the 2-layer tiny llama target."""
    prompts = [torch.randint(0, 32, (10,), generator=torch.Generator().manual_seed(100 + k))
               .tolist() for k in range(4)]
    return prompts[:2], prompts[2:]


@pytest.fixture(scope="session")
def specialists():
    """(target, [drafter fitted on A, drafter fitted on B], A, B): each head is accepted deep on
    its own prompts and hardly on the other's, so routing and bandit choices matter."""
    from tests.accepted import overfit_drafter
    from tests.tiny import tiny_target

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    target = tiny_target("llama")
    a, b = specialist_prompts()
    heads = [overfit_drafter(target, p, SPECIALIST_NEW, steps=40, seed=s, lr=1e-2)
             for s, p in ((1, a), (2, b))]
    torch.set_num_threads(before)
    return target, heads, a, b
