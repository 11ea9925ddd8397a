"""Integration on the embedded default target (SmolLM2-135M-Instruct, CPU fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.data.mixture import benchmark_subset
from taps_ray.data.records import Message, turn_messages
from taps_ray.data.render import render_prompt
from taps_ray.decoding.engine import SpeculativeEngine, default_stop_ids, generate_plain
from taps_ray.decoding.prompt_lookup import PromptLookupDrafter
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.models.drafter import load_drafter, untrained_drafter

GREEDY = SamplingParams()
QUICKSTART = Path(__file__).parents[2] / "runs" / "quickstart" / "drafters"
REPEAT = ("Copy this list exactly, one item per line: apple, banana, cherry, date, elderberry, "
          "fig, grape, honeydew, kiwi, lemon, mango, nectarine, orange, papaya.")


def gsm8k_prompt(target) -> list[int]:
    record = benchmark_subset("gsm8k", 1, seed=0)[0]
    return render_prompt(target.tokenizer, turn_messages(record, 0, []))


def test_default_target_greedy_is_deterministic(default_target):
    prompt = gsm8k_prompt(default_target)
    first = generate_plain(default_target, prompt, GREEDY, 20).tokens
    second = generate_plain(default_target, prompt, GREEDY, 20).tokens
    assert first == second and len(first) == 20
    assert default_target.tokenizer.decode(first, skip_special_tokens=True).strip()


def test_plain_loop_matches_hf_generate_on_default_target(default_target):
    prompt = gsm8k_prompt(default_target)
    ids = torch.tensor([prompt])
    hf = default_target.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False
    )[0, len(prompt) :].tolist()
    ours = generate_plain(default_target, prompt, GREEDY, 24).tokens
    assert ours == hf


def benchmark_prompts(target, per_benchmark: int) -> list[list[int]]:
    prompts = []
    for name in ("mt_bench", "gsm8k", "math500", "svamp"):
        for record in benchmark_subset(name, per_benchmark, seed=1):
            prompts.append(render_prompt(target.tokenizer, turn_messages(record, 0, [])))
    return prompts


@pytest.mark.slow
def test_untrained_drafter_greedy_equals_hf_generate_on_benchmarks(default_target):
    """8 benchmark prompts x 64 tokens with a head that is almost never accepted (tau ~ 1):
    the steps that accept nothing must be lossless too."""
    drafter = untrained_drafter(default_target, seed=0, draft_vocab_size=2048)
    engine = SpeculativeEngine(default_target, [drafter], TreeConfig(12, 3, 4))
    stops = default_stop_ids(default_target)
    for prompt in benchmark_prompts(default_target, 2):
        ids = torch.tensor([prompt])
        hf = default_target.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False
        )[0, len(prompt) :].tolist()
        spec = engine.generate(prompt, GREEDY, 64, stop_token_ids=stops)
        assert spec.tokens == hf


def trained_specialist(target):
    """The quickstart's math specialist (HASS, else EAGLE-2); skips when it was not trained."""
    for name in ("math-hass", "math-eagle2"):
        if (QUICKSTART / name / "taps.json").is_file():
            return load_drafter(str(QUICKSTART / name), target)
    pytest.skip(f"no trained math specialist under {QUICKSTART} (run taps-ray quickstart)")


def pooled(steps) -> tuple[float, int]:
    """(tau, deepest accepted path) over the steps of several generations."""
    return sum(s.committed for s in steps) / len(steps), max(s.accepted for s in steps)


def test_trained_specialist_greedy_equals_plain_on_benchmarks(default_target):
    """The quickstart's trained math head, accepted for real (published tree 60/5/10), on a
    GSM8K and a MATH-500 prompt: every token equals plain greedy decoding."""
    engine = SpeculativeEngine(default_target, [trained_specialist(default_target)],
                               TreeConfig(60, 5, 10))
    steps = []
    for prompt in benchmark_prompts(default_target, 1)[1:3]:  # gsm8k, math500
        plain = generate_plain(default_target, prompt, GREEDY, 48).tokens
        spec = engine.generate(prompt, GREEDY, 48)
        assert spec.tokens == plain
        steps += spec.steps
    tau, deepest = pooled(steps)
    assert tau >= 1.4 and deepest >= 3, (tau, deepest)


def test_prompt_lookup_on_a_repetitive_prompt_is_accepted_and_lossless(default_target):
    """No training needed: copying a list from the prompt gives long accepted chains, so the
    tokens checked against plain greedy decoding come from deep accepted paths."""
    prompt = render_prompt(default_target.tokenizer, (Message("user", REPEAT),))
    engine = SpeculativeEngine(default_target, [PromptLookupDrafter()], TreeConfig(10, 5, 1))
    plain = generate_plain(default_target, prompt, GREEDY, 48).tokens
    spec = engine.generate(prompt, GREEDY, 48)
    assert spec.tokens == plain
    tau, deepest = pooled(spec.steps)
    assert tau >= 2.0 and deepest >= 3, (tau, deepest)


def test_generate_cli_reports_lossless_json():
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "taps_ray", "generate", "--chat", "--prompt", REPEAT,
         "--drafter", "prompt-lookup", "--policy", "fixed", "--max-new-tokens", "24",
         "--tree", "10/5/1", "--check-lossless", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["lossless"] is True
    assert report["new_tokens"] == 24 or report["finish_reason"] == "stop"
    assert report["text"].strip() and report["tau"] >= 2.0  # drafts were accepted
    assert {"tokens_per_s", "time_s"} <= set(report)
