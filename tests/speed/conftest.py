"""Hand-made cost profiles and a tiny random target saved as a loadable HF folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from taps_ray.speed.profile import CostProfile, HardwareKey

KEY = HardwareKey(target="tiny", dtype="float32", device="cpu: test cpu", threads=2,
                  kernels="default")


def hand_profile(key: HardwareKey = KEY) -> CostProfile:
    """Round numbers, so predictions can be checked by hand."""
    return CostProfile(
        key=key,
        t1_s=0.05,
        verify_s={100: {1: 0.05, 8: 0.06, 64: 0.12}, 300: {1: 0.07, 8: 0.08, 64: 0.14}},
        draft_round_s={"a": {1: 0.002, 10: 0.004}, "b": {1: 0.004, 10: 0.008},
                       "prompt-lookup": {1: 0.0}},
        overhead_s={"route": 0.001, "merge": 0.002, "logits_row": 0.003, "step": 0.001},
        created_at="2026-01-01T00:00:00+00:00",
        git_rev="abc1234",
        ref_kv_len=200,
        draft_call_s={"prompt-lookup": 0.0005},
    )


@pytest.fixture()
def profile() -> CostProfile:
    return hand_profile()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """tests/tiny.py's llama target with a word-level tokenizer and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.tiny import tiny_target

    folder = tmp_path_factory.mktemp("tiny-target")
    tiny_target().model.save_pretrained(folder)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(32)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tokenizer.save_pretrained(folder)
    return folder
