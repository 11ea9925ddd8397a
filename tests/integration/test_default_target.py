"""Integration on the embedded default target (SmolLM2-135M-Instruct, CPU fp32)."""

from __future__ import annotations

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.data.mixture import benchmark_subset
from taps_ray.data.records import turn_messages
from taps_ray.data.render import render_prompt
from taps_ray.decoding.engine import SpeculativeEngine, default_stop_ids, generate_plain
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.models.drafter import untrained_drafter

GREEDY = SamplingParams()


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


@pytest.mark.parametrize("drafter_seed", [0])
def test_speculative_greedy_equals_hf_generate_on_benchmarks(default_target, drafter_seed):
    """8 benchmark prompts x 64 tokens: losslessness must not depend on drafter quality."""
    drafter = untrained_drafter(default_target, seed=drafter_seed, draft_vocab_size=2048)
    engine = SpeculativeEngine(default_target, [drafter], TreeConfig(12, 3, 4))
    stops = default_stop_ids(default_target)
    for prompt in benchmark_prompts(default_target, 2):
        ids = torch.tensor([prompt])
        hf = default_target.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False
        )[0, len(prompt) :].tolist()
        spec = engine.generate(prompt, GREEDY, 64, stop_token_ids=stops)
        assert spec.tokens == hf


def test_generate_cli_reports_lossless_json():
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "taps_ray", "generate", "--chat", "--prompt", "What is 7 * 8?",
         "--max-new-tokens", "24", "--tree", "12/3/4", "--check-lossless", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["lossless"] is True
    assert report["new_tokens"] == 24 or report["finish_reason"] == "stop"
    assert report["text"].strip() and report["steps"] >= 1 and report["tau"] >= 1.0
    assert {"tokens_per_s", "time_s"} <= set(report)
