"""The service-layer tests' tiny target (digit tokenizer) and two untrained drafters."""

from __future__ import annotations

import dataclasses

import pytest

from taps_ray.models.drafter import untrained_drafter
from tests.tiny import tiny_target


@pytest.fixture(scope="module")
def target():
    from tests.serving.test_service import DigitTokenizer

    return dataclasses.replace(tiny_target("llama", vocab=32), tokenizer=DigitTokenizer())


@pytest.fixture(scope="module")
def drafters(target):
    out = []
    for seed, name in enumerate(("math-a", "chat-b")):
        drafter = untrained_drafter(target, seed)
        drafter.meta = dataclasses.replace(drafter.meta, name=name)
        out.append(drafter)
    return out
