"""EAGLE-3 heads on disk: the published layout (weights by their published names, the
LlamaForCausalLMEagle3 draft config), round trips, and refusals in one sentence."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from taps_ray.errors import TapsError
from taps_ray.models.drafter import (
    CONFIG_FILE,
    META_FILE,
    WEIGHTS_FILE,
    DrafterMeta,
    load_drafter,
    read_drafter,
    read_meta,
    save_drafter,
    untrained_drafter,
)
from taps_ray.models.eagle3 import Eagle3Drafter
from tests.tiny import tiny_target

VOCAB = torch.tensor([1, 4, 5, 9, 20, 31])  # a reduced draft vocabulary (target ids)


def random_head(target, vocab=VOCAB, aux=(1, 1, 2), seed=0) -> Eagle3Drafter:
    """An EAGLE-3 head with every weight random (norms too), so any mix-up shows."""
    torch.manual_seed(seed)
    head = Eagle3Drafter(target.model.config, vocab, aux)
    for p in head.parameters():
        p.data.normal_(0, 0.3)
    return head.eval().requires_grad_(False)


def outputs(head, seed=1):
    g = torch.Generator().manual_seed(seed)
    hidden, embeds = torch.randn(2, 5, 64, generator=g), torch.randn(2, 5, 64, generator=g)
    aux = torch.randn(2, 5, 192, generator=g)
    return head.logits(head(hidden, embeds)), head.project(aux)


def saved(tmp_path, target=None, **kw):
    target = target or tiny_target("llama")
    head = random_head(target, **kw)
    meta = DrafterMeta(name="math-eagle3", method="eagle3", target=target.name)
    return head, save_drafter(head, tmp_path / "d", meta)


# ---- save / load ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_save_load_round_trip_gives_equal_outputs(tmp_path, family):
    target = tiny_target(family)
    head, path = saved(tmp_path, target)
    again = load_drafter(path, target)
    assert isinstance(again, Eagle3Drafter)
    for a, b in zip(outputs(again), outputs(head), strict=True):
        assert torch.equal(a, b)
    assert again.aux_layers == (1, 1, 2)
    assert again.draft_vocab.tolist() == VOCAB.tolist()
    assert again.meta.method == "eagle3" and again.meta.layout == "eagle3"
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE, META_FILE]
    assert not list(tmp_path.glob("*.tmp"))


def test_weights_are_exactly_the_published_state_dict(tmp_path):
    head, path = saved(tmp_path)
    state = load_file(str(path / WEIGHTS_FILE))
    assert state.keys() == head.state_dict().keys()
    assert {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d",
            "midlayer.hidden_norm.weight", "midlayer.self_attn.q_proj.weight"} <= state.keys()
    assert state["d2t"].tolist() == (VOCAB - torch.arange(len(VOCAB))).tolist()
    assert state["t2d"].dtype == torch.bool and state["t2d"].sum() == len(VOCAB)


def test_config_and_meta_record_the_eagle3_layout(tmp_path):
    _, path = saved(tmp_path)
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 1
    assert config["draft_vocab_size"] == len(VOCAB) and config["target_hidden_size"] == 64
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 1, 2]
    assert config["tie_word_embeddings"] is False
    meta = read_meta(path)
    assert (meta.method, meta.layout, meta.draft_vocab_size, meta.aux_layers) == (
        "eagle3", "eagle3", len(VOCAB), [1, 1, 2])


def test_read_drafter_needs_no_target(tmp_path):
    head, path = saved(tmp_path, target=tiny_target("qwen2"))
    again = read_drafter(path)
    assert again.target_config.num_hidden_layers == 2  # the target's, not the draft's 1
    assert type(again.midlayer).__name__ == "Qwen2DecoderLayer"
    for a, b in zip(outputs(again), outputs(head), strict=True):
        assert torch.equal(a, b)


def test_untrained_eagle3_head_saves_and_loads(tmp_path):
    target = tiny_target("llama")
    head = untrained_drafter(target, seed=2, draft_vocab_size=8, layout="eagle3")
    assert head.meta.aux_layers == list(head.aux_layers) == [0, 1, 2]
    again = load_drafter(save_drafter(head, tmp_path / "d", head.meta), target)
    assert torch.equal(outputs(again)[0], outputs(head)[0])


def test_eagle2_folders_load_as_before(tmp_path):
    target = tiny_target("llama")
    path = save_drafter(untrained_drafter(target, layout="eagle"), tmp_path / "d", DrafterMeta())
    assert type(load_drafter(path, target)).__name__ == "EagleDrafter"
    assert read_meta(path).aux_layers == []


# ---- refusals -------------------------------------------------------------------------------


def _edit_state(path, change):
    state = load_file(str(path / WEIGHTS_FILE))
    change(state)
    save_file(state, str(path / WEIGHTS_FILE))


@pytest.mark.parametrize("change, match", [
    (lambda s: s.pop("norm.weight"), "do not match the head of layout 'eagle3' \\(norm.weight"),
    (lambda s: s.update(extra=torch.zeros(1)), "do not match .*extra"),
    (lambda s: s.pop("d2t"), "no d2t draft-vocabulary map"),
    (lambda s: s.update(d2t=s["d2t"].flip(0)), "not increasing"),
    (lambda s: s.update(d2t=s["d2t"] + 40), "damaged: eagle3 draft vocabulary"),
    (lambda s: s.update(t2d=~s["t2d"]), "t2d and d2t maps that disagree"),
    (lambda s: s.update({"fc.weight": torch.zeros(64, 128)}), "fc.weight has shape"),
])
def test_damaged_weights_are_refused_in_one_sentence(tmp_path, change, match):
    _, path = saved(tmp_path)
    _edit_state(path, change)
    with pytest.raises(TapsError, match=match):
        read_drafter(path)


def test_damaged_config_is_refused(tmp_path):
    _, path = saved(tmp_path)
    config = json.loads((path / CONFIG_FILE).read_text())
    del config["target_num_hidden_layers"]
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(TapsError, match="lacks target_num_hidden_layers"):
        read_drafter(path)
    (path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(TapsError, match="config .* is damaged"):
        read_drafter(path)


def test_mismatched_targets_are_refused(tmp_path):
    _, path = saved(tmp_path)
    with pytest.raises(TapsError, match="hidden_size=64 but target"):
        load_drafter(path, _target_with(hidden_size=32, head_dim=8))
    with pytest.raises(TapsError, match="vocab_size=32 but target"):
        load_drafter(path, tiny_target("llama", vocab=48))
    with pytest.raises(TapsError, match="model_type=llama"):
        load_drafter(path, tiny_target("qwen2"))
    with pytest.raises(TapsError, match="target of 2 layers but target 'tiny-llama' has 1"):
        load_drafter(path, _target_with(num_hidden_layers=1))


def test_aux_layers_outside_the_target_are_refused(tmp_path):
    _, path = saved(tmp_path)
    meta = read_meta(path)
    meta.aux_layers = [1, 2, 3]
    (path / META_FILE).write_text(json.dumps(meta.__dict__))
    with pytest.raises(TapsError, match="damaged: eagle3 aux_layers \\[1, 2, 3\\]"):
        load_drafter(path, tiny_target("llama"))


def test_other_tokenizer_is_refused(tmp_path):
    target = tiny_target("llama")
    head = random_head(target)
    path = save_drafter(head, tmp_path / "d", DrafterMeta(tokenizer_fingerprint="x"))

    class Tok:
        def get_vocab(self):
            return {"a": 0}

    target.tokenizer = Tok()
    with pytest.raises(TapsError, match="another tokenizer"):
        load_drafter(path, target)


def _target_with(**changes):
    from transformers import AutoModelForCausalLM

    from taps_ray.models.target import Target
    from tests.tiny import tiny_config

    config = tiny_config("llama")
    for key, value in changes.items():
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_config(config).eval()
    return Target("tiny-llama", model, None, torch.device("cpu"), torch.float32)


# ---- weight averaging -----------------------------------------------------------------------


def test_eagle3_heads_of_one_vocabulary_and_layers_average(tmp_path):
    from taps_ray.training.averaging import average_drafters

    target = tiny_target("llama")
    a, b = random_head(target, seed=1), random_head(target, seed=2)
    a.meta = DrafterMeta(name="math-eagle3", method="eagle3", aux_layers=[1, 1, 2])
    b.meta = DrafterMeta(name="chat-eagle3", method="eagle3", aux_layers=[1, 1, 2])
    avg = average_drafters([a, b], [3, 1])
    sa, sb, s = a.state_dict(), b.state_dict(), avg.state_dict()
    for key in ("fc.weight", "lm_head.weight", "norm.weight", "midlayer.hidden_norm.weight"):
        torch.testing.assert_close(s[key], 0.75 * sa[key] + 0.25 * sb[key])
    assert torch.equal(s["d2t"], sa["d2t"]) and torch.equal(s["t2d"], sa["t2d"])
    assert avg.meta.method == "eagle3" and avg.meta.aux_layers == [1, 1, 2]
    assert torch.equal(outputs(average_drafters([a, b], [1, 0]))[0], outputs(a)[0])
    again = load_drafter(save_drafter(avg, tmp_path / "avg", avg.meta), target)
    assert torch.equal(outputs(again)[0], outputs(avg)[0])


@pytest.mark.parametrize("other, match", [
    (lambda t: untrained_drafter(t, layout="eagle"),
     "drafter 1 is an EAGLE-2/HASS head and drafter 0 is an EAGLE-3 head"),
    (lambda t: random_head(t, vocab=torch.tensor([1, 4, 5, 9, 20, 30])),
     "another draft vocabulary \\(d2t\\)"),
    (lambda t: random_head(t, aux=(0, 1, 2)), "reads target layers \\[0, 1, 2\\] but drafter 0"),
    (lambda t: random_head(t, vocab=torch.arange(8)), "another architecture"),
])
def test_averaging_refuses_heads_that_differ(other, match):
    from taps_ray.training.averaging import average_drafters

    target = tiny_target("llama")
    with pytest.raises(TapsError, match=match):
        average_drafters([random_head(target), other(target)])
