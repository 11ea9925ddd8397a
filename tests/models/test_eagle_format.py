"""Published EAGLE-1/2 checkpoints in and engine folders out.

Import is checked against a reference forward written here from the published layout (EAGLE
`eagle/model/cnets1.py`), not from our module: fc over cat(embed(x_{t+1}), f_t), one decoder
layer without input norm (rotary attention, post-attention RMSNorm, SiLU MLP), no final norm,
the target's LM head. Export is checked against the key names and shapes vLLM and SGLang read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from taps_ray.cli import main
from taps_ray.config.schema import DrafterConfig, TreeConfig
from taps_ray.decoding.proposer import DrafterSession
from taps_ray.errors import TapsError
from taps_ray.models.drafter import DrafterMeta, load_drafter, save_drafter, untrained_drafter
from taps_ray.models.eagle_format import (
    TOKEN_MAP_FILE,
    export_folder,
    import_published,
    published_state,
    sglang_flags,
)
from tests.tiny import tiny_target

TREE = TreeConfig(12, 3, 4)
pytestmark = pytest.mark.usefixtures("one_thread")


# ---- a checkpoint as EAGLE saves it, and the published forward -------------------------------


def published_checkpoint(cfg, seed=0, fc_bias=True, qkv_bias=False) -> dict:
    """Random weights under the names EAGLE's Model (cnets1.py) saves: fc.*, layers.0.*."""
    g = torch.Generator().manual_seed(seed)
    d, f = cfg.hidden_size, cfg.intermediate_size
    hd = d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd

    def w(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    state = {
        "fc.weight": w(d, 2 * d),
        "layers.0.self_attn.q_proj.weight": w(q, d),
        "layers.0.self_attn.k_proj.weight": w(kv, d),
        "layers.0.self_attn.v_proj.weight": w(kv, d),
        "layers.0.self_attn.o_proj.weight": w(d, q),
        "layers.0.mlp.gate_proj.weight": w(f, d),
        "layers.0.mlp.up_proj.weight": w(f, d),
        "layers.0.mlp.down_proj.weight": w(d, f),
        "layers.0.post_attention_layernorm.weight": 1 + w(d),
    }
    if fc_bias:
        state["fc.bias"] = w(d)
    if qkv_bias:  # EAGLE's LlamaAttention with config.qkv_bias (Qwen2 targets)
        for name, n in (("q", q), ("k", kv), ("v", kv)):
            state[f"layers.0.self_attn.{name}_proj.bias"] = w(n)
    return state


def eagle_config(cfg) -> dict:
    """config.json as EAGLE ships it: the target's Llama-style config with one layer."""
    config = cfg.to_dict()
    config["num_hidden_layers"] = 1
    return config


def rope_theta(cfg) -> float:
    theta = getattr(cfg, "rope_theta", None)
    return float(theta if theta is not None else cfg.rope_parameters["rope_theta"])


def reference_logits(state, cfg, features, tokens, embed, lm_head) -> torch.Tensor:
    """The published EAGLE-1/2 forward over T pairs (f_t, x_{t+1}), causal; -> [T, V]."""
    d, nh, nkv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    hd, n = d // nh, features.shape[0]

    def lin(name, x):
        out = x @ state[f"{name}.weight"].T
        return out + state[f"{name}.bias"] if f"{name}.bias" in state else out

    x = lin("fc", torch.cat([embed[tokens], features], -1))  # [T, d]; no input norm next
    q = lin("layers.0.self_attn.q_proj", x).view(n, nh, hd).transpose(0, 1)
    k = lin("layers.0.self_attn.k_proj", x).view(n, nkv, hd).transpose(0, 1)
    v = lin("layers.0.self_attn.v_proj", x).view(n, nkv, hd).transpose(0, 1)
    inv = 1.0 / rope_theta(cfg) ** (torch.arange(0, hd, 2).float() / hd)
    ang = torch.arange(n).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rotate(t):
        return t * cos + torch.cat([-t[..., hd // 2:], t[..., : hd // 2]], -1) * sin

    q, k = rotate(q), rotate(k)
    k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
    scores = q @ k.transpose(1, 2) / hd**0.5
    scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
    attn = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, nh * hd)
    h = x + lin("layers.0.self_attn.o_proj", attn)
    normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)
    normed = normed * state["layers.0.post_attention_layernorm.weight"]
    mlp = lin("layers.0.mlp.down_proj", torch.nn.functional.silu(
        lin("layers.0.mlp.gate_proj", normed)) * lin("layers.0.mlp.up_proj", normed))
    return (h + mlp) @ lm_head.T  # no final norm: the LM head reads the layer output


def write_checkpoint(folder, state, config, as_bin=True):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if as_bin:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def our_logits(drafter, target, features, tokens) -> torch.Tensor:
    embed = target.model.get_input_embeddings().weight
    out = drafter(features[None], embed[tokens][None])[0]
    return out @ drafter.head_weight(target.model.get_output_embeddings().weight).T


# ---- import ---------------------------------------------------------------------------------

CASES = [  # family, fc bias, q/k/v bias, shared weights in the file, file kind
    ("llama", True, False, ("embed_tokens.weight",), "bin"),
    ("llama", False, False, ("layers.0.input_layernorm.weight",), "safetensors"),
    ("qwen2", True, True, ("embed_tokens.weight", "lm_head.weight"), "bin"),
]


@pytest.mark.parametrize(("family", "fc_bias", "qkv_bias", "extra", "kind"), CASES,
                         ids=["llama-bin-embed", "llama-nobias-safetensors", "qwen2-bin"])
def test_imported_drafter_matches_the_published_forward(tmp_path, family, fc_bias, qkv_bias,
                                                        extra, kind):
    target = tiny_target(family)
    cfg = target.model.config
    state = published_checkpoint(cfg, fc_bias=fc_bias, qkv_bias=qkv_bias)
    shared = {"embed_tokens.weight": target.model.get_input_embeddings().weight,
              "lm_head.weight": target.model.get_output_embeddings().weight}
    full = {**state, **{k: shared[k].clone() for k in extra if k in shared}}
    if "layers.0.input_layernorm.weight" in extra:  # older EAGLE files; must be ignored
        full["layers.0.input_layernorm.weight"] = torch.rand(cfg.hidden_size) * 3
    folder = write_checkpoint(tmp_path / "ckpt", full, eagle_config(cfg), as_bin=kind == "bin")
    drafter = import_published(folder, cfg, target=target.name)
    g = torch.Generator().manual_seed(1)
    features, tokens = torch.randn(7, cfg.hidden_size, generator=g), torch.randint(0, 32, (7,))
    want = reference_logits(state, cfg, features, tokens, shared["embed_tokens.weight"],
                            shared["lm_head.weight"])
    torch.testing.assert_close(our_logits(drafter, target, features, tokens), want,
                               rtol=1e-4, atol=1e-4)
    assert drafter.layout == "eagle" and drafter.meta.layout == "eagle"
    save_drafter(drafter, tmp_path / "d", drafter.meta)  # usable like any drafter
    again = load_drafter(tmp_path / "d", target)
    assert torch.equal(our_logits(again, target, features, tokens),
                       our_logits(drafter, target, features, tokens))


@pytest.mark.parametrize(("change", "match"), [
    (lambda s, c: c.update(hidden_size=128), "hidden_size=128 but target 'tiny-llama' has 64"),
    (lambda s, c: c.update(vocab_size=48), "vocab_size=48"),
    (lambda s, c: c.update(num_hidden_layers=2), "num_hidden_layers=2"),
    (lambda s, c: c.update(architectures=["LlamaForCausalLMEagle3"]), "EAGLE-3"),
    (lambda s, c: s.update({"midlayer.hidden_norm.weight": torch.ones(64)}), "only EAGLE-1/2"),
    (lambda s, c: s.update({"norm.weight": torch.ones(64)}), "'norm.weight'"),
    (lambda s, c: s.pop("layers.0.mlp.up_proj.weight"), "lacks 'layers.0.mlp.up_proj.weight'"),
    (lambda s, c: s.update({"fc.weight": torch.ones(64, 64)}), r"fc.weight of shape \[64, 64\]"),
    (lambda s, c: s.update({"embed_tokens.weight": torch.ones(48, 64)}), "embed_tokens"),
], ids=["hidden", "vocab", "layers", "eagle3-config", "eagle3-keys", "final-norm", "missing",
        "shape", "embedding"])
def test_checkpoints_that_do_not_fit_are_refused_in_one_sentence(tmp_path, change, match):
    target = tiny_target("llama")
    state, config = published_checkpoint(target.model.config), eagle_config(target.model.config)
    change(state, config)
    folder = write_checkpoint(tmp_path / "ckpt", state, config)
    with pytest.raises(TapsError, match=match):
        import_published(folder, target.model.config, target=target.name)


def test_unreadable_checkpoints_are_refused(tmp_path):
    target = tiny_target("llama")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TapsError, match="no pytorch_model.bin"):
        import_published(tmp_path / "empty", target.model.config, target="t")
    folder = write_checkpoint(tmp_path / "c", published_checkpoint(target.model.config),
                              eagle_config(target.model.config))
    (folder / "pytorch_model.bin").write_bytes(b"not a zip")
    with pytest.raises(TapsError, match="cannot be read"):
        import_published(folder, target.model.config, target="t")
    (folder / "config.json").unlink()
    with pytest.raises(TapsError, match="has no config.json"):
        import_published(folder, target.model.config, target="t")


# ---- export: what the engines' loaders read ---------------------------------------------------

# vLLM vllm/model_executor/models/llama_eagle.py @00da923: LlamaModel.load_weights reads fc.weight
# and layers.0.* (q/k/v and gate/up stacked into qkv_proj / gate_up_proj by the loader); layer 0
# has no input_layernorm; fc has no bias (an fc.bias is skipped); embed_tokens is shared.
# SGLang python/sglang/srt/models/llama_eagle.py @034b3be: the same layer names, plus fc.bias.
LAYER_KEYS = {
    "layers.0.self_attn.q_proj.weight": ("heads*head_dim", "d"),
    "layers.0.self_attn.k_proj.weight": ("kv_heads*head_dim", "d"),
    "layers.0.self_attn.v_proj.weight": ("kv_heads*head_dim", "d"),
    "layers.0.self_attn.o_proj.weight": ("d", "heads*head_dim"),
    "layers.0.mlp.gate_proj.weight": ("ffn", "d"),
    "layers.0.mlp.up_proj.weight": ("ffn", "d"),
    "layers.0.mlp.down_proj.weight": ("d", "ffn"),
    "layers.0.post_attention_layernorm.weight": ("d",),
    "fc.weight": ("d", "2d"),
}


def expected_shape(dims, cfg) -> list[int]:
    hd = cfg.hidden_size // cfg.num_attention_heads
    sizes = {"d": cfg.hidden_size, "2d": 2 * cfg.hidden_size, "ffn": cfg.intermediate_size,
             "heads*head_dim": cfg.num_attention_heads * hd,
             "kv_heads*head_dim": cfg.num_key_value_heads * hd}
    return [sizes[x] for x in dims]


def eagle_drafter(target, seed=3, vocab=0, bias=True):
    drafter = untrained_drafter(target, seed=seed, draft_vocab_size=vocab, layout="eagle")
    if not bias:
        drafter.fc.bias.zero_()
    drafter.meta.name, drafter.meta.method = "math-hass", "hass"
    return drafter


@pytest.mark.parametrize("bias", [False, True], ids=["zero-bias", "bias"])
def test_vllm_folder_has_what_llama_eagle_reads(tmp_path, bias):
    target = tiny_target("llama")
    out = export_folder(eagle_drafter(target, bias=bias), "vllm", tmp_path / "v", tree=TREE,
                        served_target="meta-llama/Meta-Llama-3-8B-Instruct")
    state, cfg = load_file(str(out / "model.safetensors")), target.model.config
    want = set(LAYER_KEYS) | ({"fc.bias"} if bias else set())  # nonzero bias kept for others
    assert set(state) == want
    for key, dims in LAYER_KEYS.items():
        assert list(state[key].shape) == expected_shape(dims, cfg), key
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    assert config["max_position_embeddings"] == cfg.max_position_embeddings == 512
    assert config["architectures"] == ["LlamaForCausalLM"]  # vLLM maps it to EagleLlama...
    assert config["model_type"] == "llama" and config["hidden_size"] == 64
    readme = (out / "README.md").read_text()
    spec = {"method": "eagle", "model": str(out), "num_speculative_tokens": TREE.depth + 1}
    assert f"--speculative-config '{json.dumps(spec)}'" in readme
    assert ("without a bias" in readme) == bias
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "serve_llm.yaml"]


def test_sglang_folder_has_bias_architecture_and_token_map(tmp_path):
    target = tiny_target("llama")
    drafter = eagle_drafter(target, vocab=20, bias=False)
    out = export_folder(drafter, "sglang", tmp_path / "s", tree=TREE, served_target="T")
    state = load_file(str(out / "model.safetensors"))
    assert set(state) == set(LAYER_KEYS) | {"fc.bias"}  # SGLang's fc has a bias to load
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle"]
    ids = torch.load(out / TOKEN_MAP_FILE, weights_only=True)  # as SGLang's load_token_map
    assert torch.equal(ids, drafter.draft_vocab)
    flags = sglang_flags(TREE)
    assert flags == {"--speculative-num-steps": 4, "--speculative-eagle-topk": 4,
                     "--speculative-num-draft-tokens": 13}
    readme = (out / "README.md").read_text()
    assert "--speculative-algorithm EAGLE" in readme
    assert f"--speculative-token-map {out / TOKEN_MAP_FILE}" in readme
    assert all(f"{k} {v}" in readme for k, v in flags.items())


def draft(drafter, target, features, tokens):
    session = DrafterSession(drafter, target.model.get_input_embeddings(),
                             target.model.get_output_embeddings().weight)
    session.reset()
    session.extend(features, tokens)
    return session.draft(TREE)


@pytest.mark.parametrize(("fmt", "vocab"), [("vllm", 0), ("vllm", 20), ("sglang", 20)])
def test_export_then_import_gives_identical_weights_and_trees(tmp_path, fmt, vocab):
    target = tiny_target("llama")
    drafter = eagle_drafter(target, vocab=vocab)
    out = export_folder(drafter, fmt, tmp_path / fmt, tree=TREE, served_target="T")
    back = import_published(out, target.model.config, target=target.name)
    mine, theirs = published_state(drafter), published_state(back)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert back.draft_vocab_size == vocab
    assert (back.meta.name, back.meta.method, back.meta.extra["tree"]) == (
        "math-hass", "hass", {"total_tokens": 12, "depth": 3, "top_k": 4})
    g = torch.Generator().manual_seed(2)
    features, tokens = torch.randn(6, 64, generator=g), torch.randint(0, 32, (6,), generator=g)
    a, b = draft(drafter, target, features, tokens), draft(back, target, features, tokens)
    for field in ("tokens", "parents", "scores"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_default_target_round_trip_in_both_formats(tmp_path):
    """The embedded default target with a reduced-vocabulary eagle head: export -> import gives
    the same weights and the same trees on a real prompt's features."""
    from taps_ray.decoding.target_runner import TargetRunner
    from taps_ray.models.drafter import tokenizer_fingerprint
    from taps_ray.models.target import load_target

    target = load_target()
    drafter = eagle_drafter(target, vocab=4096)
    ids = target.tokenizer("What is 12 times 7? Answer:", return_tensors="pt").input_ids[0]
    with torch.no_grad():
        features = TargetRunner(target.model).prefill(ids)  # [L, d]
    features, tokens = features[:-1], ids[1:]  # f_t beside x_{t+1}
    want = draft(drafter, target, features, tokens)
    for fmt in ("vllm", "sglang"):
        out = export_folder(drafter, fmt, tmp_path / fmt, tree=TREE, served_target=target.name)
        back = import_published(out, target.model.config, target=target.name,
                                fingerprint=tokenizer_fingerprint(target.tokenizer))
        mine, theirs = published_state(drafter), published_state(back)
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), fmt
        assert torch.equal(back.draft_vocab, drafter.draft_vocab)
        got = draft(back, target, features, tokens)
        for field in ("tokens", "parents", "scores"):
            assert torch.equal(getattr(want, field), getattr(got, field)), (fmt, field)


def test_new_drafters_are_trained_in_the_published_layout():
    assert DrafterConfig().layout == "eagle"  # exportable to vLLM / SGLang as trained


def test_export_refuses_the_taps_layout_other_families_and_existing_folders(tmp_path):
    target = tiny_target("llama")
    with pytest.raises(TapsError, match="'taps' layout"):
        export_folder(untrained_drafter(target), "vllm", tmp_path / "a", tree=TREE,
                      served_target="T")
    qwen = untrained_drafter(tiny_target("qwen2"), layout="eagle")
    with pytest.raises(TapsError, match="Llama-family targets only"):
        export_folder(qwen, "sglang", tmp_path / "b", tree=TREE, served_target="T")
    (tmp_path / "c").mkdir()
    with pytest.raises(TapsError, match="exists"):
        export_folder(eagle_drafter(target), "vllm", tmp_path / "c", tree=TREE,
                      served_target="T")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # nothing half-written


# ---- Ray Serve LLM app ------------------------------------------------------------------------


def test_serve_llm_app_validates_with_rays_schema(tmp_path):
    from taps_ray.serving.vllm_app import check_llm_app

    target = tiny_target("llama")
    out = export_folder(eagle_drafter(target), "vllm", tmp_path / "v", tree=TREE,
                        served_target="meta-llama/Meta-Llama-3-8B-Instruct")
    config = yaml.safe_load((out / "serve_llm.yaml").read_text())
    app = config["applications"][0]
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    llm = app["args"]["llm_configs"][0]
    assert llm["engine_kwargs"]["speculative_config"]["model"] == str(out)
    assert llm["model_loading_config"]["model_source"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    check_llm_app(app, serving=False)
    bad = {**app, "args": {"llm_configs": [{**llm, "engine_kwargs": "x"}]}}
    with pytest.raises(TapsError, match="invalid Ray Serve LLM args"):
        check_llm_app(bad, serving=False)


def test_serve_check_validates_and_serving_without_vllm_is_one_sentence(tmp_path, capsys):
    import importlib.util

    target = tiny_target("llama")
    out = export_folder(eagle_drafter(target), "vllm", tmp_path / "v", tree=TREE,
                        served_target="meta-llama/Meta-Llama-3-8B-Instruct")
    assert main(["serve", str(out / "serve_llm.yaml"), "--check"]) == 0
    if importlib.util.find_spec("vllm") is None:
        assert main(["serve", str(out / "serve_llm.yaml")]) == 2
        assert "vLLM, which is not installed here" in capsys.readouterr().err


# ---- CLI --------------------------------------------------------------------------------------


def target_folder(tmp_path, family="llama"):
    target = tiny_target(family)
    target.model.save_pretrained(tmp_path / f"target-{family}")
    return target, str(tmp_path / f"target-{family}")


def test_cli_import_then_export_round_trip(tmp_path, capsys):
    target, folder = target_folder(tmp_path)
    state = published_checkpoint(target.model.config)
    ckpt = write_checkpoint(tmp_path / "ckpt", state, eagle_config(target.model.config))
    assert main(["drafter", "import", str(ckpt), "--target", folder, "--out",
                 str(tmp_path / "d"), "--name", "math-hass", "--method", "hass"]) == 0
    meta = json.loads((tmp_path / "d" / "taps.json").read_text())
    assert (meta["name"], meta["method"], meta["layout"]) == ("math-hass", "hass", "eagle")
    assert main(["drafter", "export", str(tmp_path / "d"), "--format", "sglang", "--out",
                 str(tmp_path / "s"), "--depth", "2"]) == 0
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["taps_ray"]["tree"]["depth"] == 2
    assert folder in (tmp_path / "s" / "README.md").read_text()
    again = load_file(str(tmp_path / "s" / "model.safetensors"))
    assert all(torch.equal(again[k], state[k]) for k in state)


def test_cli_refusals_exit_2_and_write_nothing(tmp_path, capsys):
    target, folder = target_folder(tmp_path)
    config = eagle_config(target.model.config)
    config["intermediate_size"] = 256
    ckpt = write_checkpoint(tmp_path / "ckpt", published_checkpoint(target.model.config), config)
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["drafter", "import", str(ckpt), "--target", folder, "--out",
                 str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "intermediate_size=256" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()
    save_drafter(untrained_drafter(target), tmp_path / "taps", DrafterMeta(target=folder))
    assert main(["drafter", "export", str(tmp_path / "taps"), "--format", "vllm", "--out",
                 str(tmp_path / "v")]) == 2
    assert "drafter.layout=eagle" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


def test_example_serve_llm_app_validates():
    repo = Path(__file__).resolve().parents[2]
    assert main(["serve", str(repo / "serve_apps/llm/vllm_eagle.yaml"), "--check"]) == 0
