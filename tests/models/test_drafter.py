"""The drafter head: shares the target's embedding/LM head, saves trained weights only, and
refuses targets or files it does not fit."""

from __future__ import annotations

import json

import pytest
import torch

from taps_ray.errors import TapsError
from taps_ray.models.drafter import (
    META_FILE,
    WEIGHTS_FILE,
    DrafterMeta,
    EagleDrafter,
    load_drafter,
    save_drafter,
    untrained_drafter,
)
from tests.tiny import tiny_target


def test_head_is_built_from_the_target_config_and_shares_its_embeddings():
    target = tiny_target("qwen2")
    drafter = untrained_drafter(target)
    assert drafter.fc.in_features == 2 * target.model.config.hidden_size
    assert type(drafter.decoder).__name__ == "Qwen2Model"
    assert len(drafter.decoder.layers) == 1
    lm_head = target.model.get_output_embeddings().weight
    assert drafter.head_weight(lm_head).data_ptr() == lm_head.data_ptr()  # shared, not copied
    names = set(drafter.state_dict())
    assert not any("lm_head" in n for n in names)


def test_save_load_round_trip(tmp_path):
    target = tiny_target("llama")
    drafter = untrained_drafter(target, seed=4)
    meta = DrafterMeta(name="math-eagle2", method="eagle2", target=target.name)
    save_drafter(drafter, tmp_path / "d", meta)
    again = load_drafter(tmp_path / "d", target)
    x, e = torch.randn(1, 5, 64), torch.randn(1, 5, 64)
    assert torch.equal(again(x, e), drafter(x, e))
    assert again.meta.name == "math-eagle2"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "config.json", "model.safetensors", "taps.json"]
    assert not list(tmp_path.glob("*.tmp"))


def test_reduced_vocab_round_trip(tmp_path):
    target = tiny_target("llama")
    drafter = EagleDrafter(target.model.config, torch.tensor([0, 3, 5, 7]))
    save_drafter(drafter, tmp_path / "d", DrafterMeta(draft_vocab_size=4))
    again = load_drafter(tmp_path / "d", target)
    assert again.draft_vocab.tolist() == [0, 3, 5, 7]
    assert again.to_target_ids(torch.tensor([1, 3])).tolist() == [3, 7]


def test_mismatched_target_is_refused(tmp_path):
    save_drafter(untrained_drafter(tiny_target("llama", vocab=32)), tmp_path / "d", DrafterMeta())
    with pytest.raises(TapsError, match="vocab_size=32 but target 'tiny-llama' has 48"):
        load_drafter(tmp_path / "d", tiny_target("llama", vocab=48))
    with pytest.raises(TapsError, match="model_type"):
        load_drafter(tmp_path / "d", tiny_target("qwen3", vocab=32))


def test_other_tokenizer_is_refused(tmp_path):
    target = tiny_target("llama")
    save_drafter(untrained_drafter(target), tmp_path / "d", DrafterMeta(tokenizer_fingerprint="x"))

    class Tok:
        def get_vocab(self):
            return {"a": 0}

    target.tokenizer = Tok()
    with pytest.raises(TapsError, match="another tokenizer"):
        load_drafter(tmp_path / "d", target)


def test_truncated_weights_are_a_clear_error(tmp_path):
    target = tiny_target("llama")
    path = save_drafter(untrained_drafter(target), tmp_path / "d", DrafterMeta())
    blob = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(TapsError, match="corrupted"):
        load_drafter(path, target)


def test_missing_files_are_a_clear_error(tmp_path):
    target = tiny_target("llama")
    path = save_drafter(untrained_drafter(target), tmp_path / "d", DrafterMeta())
    (path / META_FILE).unlink()
    with pytest.raises(TapsError, match="has no taps.json"):
        load_drafter(path, target)


def test_bad_metadata_is_a_clear_error(tmp_path):
    target = tiny_target("llama")
    path = save_drafter(untrained_drafter(target), tmp_path / "d", DrafterMeta())
    (path / META_FILE).write_text(json.dumps({"nme": 1}))
    with pytest.raises(TapsError, match="taps.json"):
        load_drafter(path, target)


def test_unsupported_family_is_refused():
    from transformers import GPT2Config

    with pytest.raises(TapsError, match="not supported by the drafter"):
        EagleDrafter(GPT2Config(n_embd=64, n_layer=1, n_head=4))
