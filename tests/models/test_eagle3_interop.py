"""EAGLE-3 heads out to vLLM / SGLang folders and published EAGLE-3 folders in."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from taps_ray.cli import main
from taps_ray.config.schema import TreeConfig
from taps_ray.errors import TapsError
from taps_ray.models.drafter import DrafterMeta, load_drafter, read_drafter, save_drafter
from taps_ray.models.eagle_format import export_folder, import_published
from taps_ray.serving.vllm_app import check_llm_app
from tests.models.test_eagle3_format import VOCAB, _target_with, outputs, random_head
from tests.tiny import tiny_target

TREE = TreeConfig(12, 3, 4)
pytestmark = pytest.mark.usefixtures("one_thread")


def deep_target():
    """A 6-layer tiny Llama: the engines' default aux layers (2, 3, 3) exist in it."""
    return _target_with(num_hidden_layers=6)


def named(head, name="math-eagle3"):
    head.meta = DrafterMeta(name=name, method="eagle3", target="T")
    return head


# ---- export: what the engines' loaders read ---------------------------------------------------

# vLLM vllm/model_executor/models/llama_eagle3.py @00bd149 (Eagle3LlamaForCausalLM.load_weights):
# d2t -> draft_id_to_target_id, t2d skipped, `midlayer.` -> `layers.0.`, q/k/v stacked from
# 2 * hidden_size inputs, fc = Linear(3 * target_hidden_size, hidden_size, bias=False), lm_head
# over draft_vocab_size, embed_tokens skipped when absent (shared with the target).
# SGLang python/sglang/srt/models/llama_eagle3.py @03d5a77: the same names under `model.`
# (midlayer kept), fc bias only if config.bias, tie_word_embeddings must be false for lm_head.
PUBLISHED_SHAPES = {
    "fc.weight": [64, 3 * 64],
    "midlayer.self_attn.q_proj.weight": [64, 2 * 64],
    "midlayer.self_attn.k_proj.weight": [32, 2 * 64],
    "midlayer.self_attn.v_proj.weight": [32, 2 * 64],
    "midlayer.self_attn.o_proj.weight": [64, 64],
    "midlayer.mlp.gate_proj.weight": [128, 64],
    "midlayer.mlp.up_proj.weight": [128, 64],
    "midlayer.mlp.down_proj.weight": [64, 128],
    "midlayer.input_layernorm.weight": [64],
    "midlayer.hidden_norm.weight": [64],
    "midlayer.post_attention_layernorm.weight": [64],
    "norm.weight": [64],
    "lm_head.weight": [len(VOCAB), 64],
    "d2t": [len(VOCAB)],
    "t2d": [32],
}


@pytest.mark.parametrize("fmt", ["vllm", "sglang"])
def test_engine_folders_have_what_llama_eagle3_reads(tmp_path, fmt):
    head = named(random_head(deep_target(), aux=(2, 3, 3)))
    out = export_folder(head, fmt, tmp_path / fmt, tree=TREE, served_target="T")
    state = load_file(str(out / "model.safetensors"))
    assert {k: list(v.shape) for k, v in state.items()} == PUBLISHED_SHAPES
    assert state["d2t"].dtype == torch.int64 and state["t2d"].dtype == torch.bool
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]  # both registries' name
    assert (config["model_type"], config["num_hidden_layers"]) == ("llama", 1)
    assert (config["draft_vocab_size"], config["target_hidden_size"]) == (len(VOCAB), 64)
    assert config["vocab_size"] == 32 and config["tie_word_embeddings"] is False
    assert config["attention_bias"] is False and "bias" not in config  # no qkv / fc bias
    assert config["eagle_config"]["use_aux_hidden_state"] is True
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert config["taps_ray"]["aux_layers"] == [2, 3, 3]
    readme = (out / "README.md").read_text()
    if fmt == "vllm":  # gpu_model_runner._get_eagle3_aux_layers_from_config: top level first
        assert config["eagle_aux_hidden_state_layer_ids"] == [2, 3, 3]
        assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [2, 3, 3]
        spec = {"method": "eagle3", "model": str(out), "num_speculative_tokens": 4}
        assert f"--speculative-config '{json.dumps(spec)}'" in readme
        app = yaml.safe_load((out / "serve_llm.yaml").read_text())["applications"][0]
        assert app["args"]["llm_configs"][0]["engine_kwargs"]["speculative_config"] == spec
        check_llm_app(app, serving=False)  # Ray Serve LLM's own schema
    else:  # the engines' default (2, L//2, L-3): SGLang's own fallback, so no ids written
        assert "eagle_aux_hidden_state_layer_ids" not in config["eagle_config"]
        assert "eagle_aux_hidden_state_layer_ids" not in config
        assert "--speculative-algorithm EAGLE3" in readme and "token-map" not in readme
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "config.json", "model.safetensors"] + (["serve_llm.yaml"]
                                                             if fmt == "vllm" else []))


def test_sglang_ids_name_layer_outputs(tmp_path):
    """SGLang llama.py set_eagle3_layers_to_capture captures before layer id + 1."""
    head = named(random_head(deep_target(), aux=(1, 2, 4)))
    out = export_folder(head, "sglang", tmp_path / "s", tree=TREE, served_target="T")
    config = json.loads((out / "config.json").read_text())
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 3]
    for aux in [(0, 2, 4), (1, 2, 6)]:  # embeddings / the last layer's output: no SGLang id
        with pytest.raises(TapsError, match="SGLang captures the outputs of layers 0..4"):
            export_folder(named(random_head(deep_target(), aux=aux)), "sglang",
                          tmp_path / f"x{aux[0]}", tree=TREE, served_target="T")


def test_export_refuses_other_families(tmp_path):
    with pytest.raises(TapsError, match="Llama-family targets only"):
        export_folder(named(random_head(tiny_target("qwen2"))), "vllm", tmp_path / "q",
                      tree=TREE, served_target="T")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("fmt, vocab", [("vllm", VOCAB), ("vllm", None), ("sglang", VOCAB)])
def test_export_then_import_gives_equal_weights_and_outputs(tmp_path, fmt, vocab):
    target = deep_target()
    head = named(random_head(target, vocab=vocab, aux=(1, 2, 4)))
    out = export_folder(head, fmt, tmp_path / fmt, tree=TREE, served_target="T")
    back = import_published(out, target.model.config, target="T")
    assert back.state_dict().keys() == head.state_dict().keys()
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in head.state_dict().items())
    assert back.aux_layers == (1, 2, 4) and back.layout == "eagle3"
    assert (back.meta.name, back.meta.method, back.meta.layout, back.meta.aux_layers) == (
        "math-eagle3", "eagle3", "eagle3", [1, 2, 4])
    assert back.meta.extra["tree"] == {"total_tokens": 12, "depth": 3, "top_k": 4}
    for a, b in zip(outputs(back), outputs(head), strict=True):
        assert torch.equal(a, b)


# ---- import of published EAGLE-3 folders ------------------------------------------------------


def published_folder(path, head, config_changes=None, state_changes=None):
    """A folder as EAGLE-3 / SpecForge publish it (e.g. yuhuili/EAGLE3-LLaMA3.1-Instruct-8B):
    pytorch_model.bin with fc / midlayer / norm / lm_head / d2t / t2d (+ the target's
    embed_tokens copy), a Llama config with draft_vocab_size and no aux ids."""
    state = {k: v.clone() for k, v in head.state_dict().items()}
    state["embed_tokens.weight"] = torch.randn(32, 64)
    config = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama",
              "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 1, "rms_norm_eps": 1e-6,
              "vocab_size": 32, "draft_vocab_size": head.draft_vocab_size,
              "tie_word_embeddings": False}
    (state_changes or (lambda s: None))(state)
    config.update(config_changes or {})
    path.mkdir()
    torch.save(state, path / "pytorch_model.bin")
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_published_folder_imports_with_the_engines_default_aux_layers(tmp_path):
    target = deep_target()
    head = random_head(target, aux=(2, 3, 3))
    back = import_published(published_folder(tmp_path / "p", head), target.model.config,
                            target="T")
    assert back.aux_layers == (2, 3, 3) and back.meta.method == "eagle3"
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in head.state_dict().items())
    save_drafter(back, tmp_path / "d", back.meta)  # usable like any drafter
    assert torch.equal(outputs(load_drafter(tmp_path / "d", target))[0], outputs(head)[0])


def test_unsorted_d2t_and_vllm_names_import_to_the_same_head(tmp_path):
    target = deep_target()
    head = random_head(target, aux=(2, 3, 3))
    order = torch.tensor([3, 0, 5, 1, 4, 2])

    def shuffle_and_rename(state):
        ids = VOCAB[order]
        state["d2t"] = ids - torch.arange(len(ids))
        state["lm_head.weight"] = state["lm_head.weight"][order]
        for key in [k for k in state if k.startswith("midlayer.")]:
            state["layers.0." + key[len("midlayer."):]] = state.pop(key)

    folder = published_folder(tmp_path / "p", head, state_changes=shuffle_and_rename)
    back = import_published(folder, target.model.config, target="T")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in head.state_dict().items())


def test_llama_style_head_for_a_qwen2_target_gets_zero_qkv_biases(tmp_path):
    target = tiny_target("qwen2")
    head = random_head(target)
    for p in "qkv":
        getattr(head.midlayer.self_attn, f"{p}_proj").bias.zero_()

    def drop_biases(state):
        for p in "qkv":
            state.pop(f"midlayer.self_attn.{p}_proj.bias")

    folder = published_folder(tmp_path / "p", head, state_changes=drop_biases)
    back = import_published(folder, target.model.config, target="T")
    assert type(back.midlayer).__name__ == "Qwen2DecoderLayer"
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in head.state_dict().items())


@pytest.mark.parametrize("ids, ours", [([1, 2, 3], (2, 3, 4)), ([2, 3, 4], (2, 3, 4))])
def test_aux_ids_in_either_numbering(tmp_path, ids, ours):
    """SGLang (PR #25454) reads ids starting at 1 as layer outputs, others as layer inputs."""
    target = deep_target()
    folder = published_folder(tmp_path / "p", random_head(target),
                              {"eagle_config": {"eagle_aux_hidden_state_layer_ids": ids}})
    assert import_published(folder, target.model.config, target="T").aux_layers == ours


@pytest.mark.parametrize("config, state, match", [
    ({"num_hidden_layers": 2}, None, "num_hidden_layers=2; only one-layer"),
    ({"target_hidden_size": 128}, None, "target_hidden_size=128 but target 'T' has 64"),
    ({"intermediate_size": 256}, None, "intermediate_size=256"),
    ({"eagle_aux_hidden_state_layer_ids": [2, 3, 9]}, None, "aux layers \\[2, 3, 9\\]"),
    (None, lambda s: s.pop("norm.weight"), "EAGLE-3 head but lacks 'norm.weight'"),
    (None, lambda s: s.update({"fc.bias": torch.zeros(64)}), "holds 'fc.bias'"),
    (None, lambda s: s.update({"embed_tokens.weight": torch.ones(48, 64)}), "embed_tokens"),
    (None, lambda s: s.update(t2d=~s["t2d"]), "t2d and d2t maps that disagree"),
    (None, lambda s: s.update(d2t=s["d2t"] + 30), "not 6 distinct target ids below 32"),
    (None, lambda s: s.pop("d2t"), "draft_vocab_size=6 but no d2t"),
    (None, lambda s: s.update({"fc.weight": torch.ones(64, 128)}), "fc.weight of shape"),
])
def test_folders_that_do_not_fit_are_refused_in_one_sentence(tmp_path, config, state, match):
    target = deep_target()
    folder = published_folder(tmp_path / "p", random_head(target), config, state)
    with pytest.raises(TapsError, match=match):
        import_published(folder, target.model.config, target="T")


# ---- CLI --------------------------------------------------------------------------------------


def test_cli_import_then_export_round_trip(tmp_path, capsys):
    target = deep_target()
    target.model.save_pretrained(tmp_path / "target")
    head = random_head(target, aux=(2, 3, 3))
    ckpt = published_folder(tmp_path / "p", head)
    assert main(["drafter", "import", str(ckpt), "--target", str(tmp_path / "target"),
                 "--out", str(tmp_path / "d"), "--name", "math-eagle3"]) == 0
    assert "layout eagle3" in capsys.readouterr().out
    meta = json.loads((tmp_path / "d" / "taps.json").read_text())
    assert (meta["method"], meta["layout"], meta["aux_layers"]) == ("eagle3", "eagle3", [2, 3, 3])
    for fmt in ("vllm", "sglang"):
        assert main(["drafter", "export", str(tmp_path / "d"), "--format", fmt, "--out",
                     str(tmp_path / fmt)]) == 0
        again = load_file(str(tmp_path / fmt / "model.safetensors"))
        assert all(torch.equal(again[k], v) for k, v in head.state_dict().items())
    assert torch.equal(outputs(read_drafter(tmp_path / "d"))[0], outputs(head)[0])
