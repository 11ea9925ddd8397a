"""Continuous batching on the default target (slow): greedy output of every request in a batch
of 8 equals its solo decoding, in fp32 on this CPU (no argmax flips from batched matmuls)."""

from __future__ import annotations

import pytest

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.adaptive import make_policy
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.prompt_lookup import PromptLookupDrafter
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.scheduler import BatchScheduler, BatchSettings, SequenceRequest

PROMPTS = [
    "What is 12 times 7? Explain step by step.",
    "Write a haiku about the sea.",
    "List three prime numbers greater than 20 and say why each is prime.",
    "Translate 'good morning, how are you?' into French.",
    "Give a one-sentence summary of photosynthesis.",
    "def fibonacci(n):\n    # return the n-th Fibonacci number\n",
    "Name the planets of the solar system in order from the sun, separated by commas.",
    "Explain what a hash table is to a ten-year-old.",
]


@pytest.mark.slow
@pytest.mark.parametrize("speculation", ["cost", "sequence"])
def test_eight_requests_equal_their_solo_decoding(speculation, one_thread):
    from taps_ray.data.records import Message
    from taps_ray.data.render import render_prompt
    from taps_ray.models.target import load_target

    target = load_target("smollm2-135m-instruct")
    reqs = []
    for i, text in enumerate(PROMPTS):
        ids = render_prompt(target.tokenizer, [Message("user", text)])
        engine = None if i % 2 == 0 else SpeculativeEngine(
            target, [PromptLookupDrafter()], TreeConfig(16, 4, 4), policy=make_policy())
        reqs.append(SequenceRequest(list(ids), SamplingParams(), 8 + 3 * i, None, 0, engine))
    settings = BatchSettings(max_batch_size=8, prefill_chunk=32, speculation=speculation)
    with BatchScheduler(target, settings) as scheduler:
        handles = [scheduler.submit(r) for r in reqs]
        outputs = [[t for c in h.chunks(timeout=300) for t in c.tokens] for h in handles]
    for request, tokens in zip(reqs, outputs, strict=True):
        solo = generate_plain(target, list(request.prompt_ids), request.sampling,
                              request.max_new_tokens)
        assert tokens == solo.tokens
