"""EAGLE-3 training: features with aux layers, the training-time-test forward equals drafting,
the loss falls, resume is exact, bad settings are user errors."""

from __future__ import annotations

import pytest
import torch

from taps_ray.decoding.features import aux_features, final_features
from taps_ray.errors import TapsError
from taps_ray.models.eagle3 import Eagle3Drafter, default_aux_layers
from taps_ray.training.eagle3 import ttt_forward, ttt_mask
from taps_ray.training.extract import forward_features
from taps_ray.training.features import FeatureCache, OnlineFeatures
from taps_ray.training.trainer import train_drafter
from taps_ray.training.trainlog import read_log
from tests.tiny import tiny_target
from tests.training.conftest import build_cache, fast_config

D = 64  # hidden size of the tiny targets


def aux_of(target) -> tuple[int, ...]:
    return default_aux_layers(target.model.config.num_hidden_layers)


def eagle3_cache(target, examples, root) -> FeatureCache:
    return build_cache(target, examples, root, aux_layers=aux_of(target))


def step_rows(out_dir) -> list[dict]:
    return [r for r in read_log(out_dir / "train_log.jsonl") if r["event"] == "step"]


def mean(values) -> float:
    return sum(values) / len(values)


def test_ttt_mask_is_causal_over_step_0_plus_the_diagonal_of_later_steps():
    mask = ttt_mask(3, 2, torch.device("cpu"))
    causal, eye = torch.ones(3, 3).tril().bool(), torch.eye(3, dtype=torch.bool)
    assert torch.equal(mask, torch.cat([causal, eye, eye], dim=1))
    assert torch.equal(ttt_mask(3, 0, torch.device("cpu")), causal)


def test_aux_cache_rows_are_final_then_aux_and_keys_stay_apart(target, examples, tmp_path):
    plain = build_cache(target, examples, tmp_path / "plain")
    cache = eagle3_cache(target, examples, tmp_path / "aux")
    assert cache.folder != plain.folder and cache.aux_layers == aux_of(target)
    assert plain.aux_layers == () and "aux_layers" not in plain.manifest["spec"]
    ids = examples[3].input_ids
    with torch.no_grad():
        out = target.model.get_decoder()(input_ids=torch.tensor([ids]), output_hidden_states=True)
    row = cache[3].features  # [T, 4d]
    assert row.shape == (len(ids), 4 * D)
    assert torch.equal(final_features(row, D), plain[3].features)
    expected = torch.cat([out.hidden_states[i][0] for i in aux_of(target)], dim=-1)
    torch.testing.assert_close(aux_features(row, D), expected, atol=1e-4, rtol=1e-4)  # batched
    online = OnlineFeatures(target, examples, aux_layers=aux_of(target)).fetch([3])[0]
    torch.testing.assert_close(online.features, row, atol=1e-4, rtol=1e-4)


def test_ttt_step_k_equals_the_drafting_chain(target, examples):
    """Step k at index t = the depth-(k+1) node drafted along the true tokens from root
    x_{t+1}: pairs 0..t with fc(aux) in one call, then the head's own outputs one at a time."""
    ids = examples[4].input_ids
    feats = forward_features(target.model.get_decoder(), [ids], target.device, aux_of(target))[0]
    torch.manual_seed(1)
    drafter = Eagle3Drafter(target.model.config, aux_layers=aux_of(target)).double().eval()
    aux = aux_features(feats, D)[None, :-1].double()  # [1, P, 3d]
    embeds = target.model.get_input_embeddings()(torch.tensor([ids[1:]])).double()  # [1, P, d]
    steps, pairs = 4, len(ids) - 1
    with torch.no_grad():
        outputs = ttt_forward(drafter, aux, embeds, steps)
        for t in range(pairs - steps + 1):
            cache = drafter.new_cache()
            h = drafter(drafter.project(aux[:, : t + 1]), embeds[:, : t + 1], None, None,
                        cache)[:, -1:]  # [1, 1, d]: the root's output, proposes depth 1
            for k in range(steps):
                if k:  # the depth-(k+1) node: its parent's output with its own (true) token
                    h = drafter(h, embeds[:, t + k : t + k + 1], None,
                                torch.tensor([[t + k]]), cache)
                torch.testing.assert_close(h[0, 0], outputs[k][0, t], rtol=1e-9, atol=1e-9)
                assert torch.equal(drafter.logits(h[0, 0]).argmax(),
                                   drafter.logits(outputs[k][0, t]).argmax())


def test_overfitting_lowers_the_loss_and_raises_every_steps_accuracy(target, examples,
                                                                     tmp_path):
    cache = eagle3_cache(target, examples, tmp_path / "feats")
    cfg = fast_config(max_steps=40, align_steps=3)
    result = train_drafter(target, cache, cfg, tmp_path / "run", method="eagle3", progress=False)
    rows = step_rows(tmp_path / "run")
    assert len(rows) == 40 == result.state.step
    # soft cross-entropy floors at the target's entropy (high for a random tiny target)
    assert mean([r["loss"] for r in rows[-5:]]) < 0.75 * mean([r["loss"] for r in rows[:5]])
    for key in ("acc", "acc_1", "acc_2"):
        assert mean([r[key] for r in rows[-5:]]) > mean([r[key] for r in rows[:5]]) + 0.3, key
    assert isinstance(result.drafter, Eagle3Drafter)
    assert result.drafter.aux_layers == aux_of(target)
    assert (result.path / "model.safetensors").is_file()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(target, examples, tmp_path):
    from taps_ray.training.vocab import build_draft_vocab

    cache = eagle3_cache(target, examples, tmp_path / "feats")
    vocab = build_draft_vocab(cache.token_arrays(), 12, 32)
    cfg = fast_config(max_steps=8, align_steps=2)  # 3 batches per epoch: stop mid-epoch 1
    kwargs = dict(method="eagle3", draft_vocab=vocab, progress=False)
    straight = train_drafter(target, cache, cfg, tmp_path / "a", **kwargs)
    stopped = train_drafter(target, cache, cfg, tmp_path / "b", stop_after=4, **kwargs)
    assert stopped.path is None and stopped.state.step == 4
    resumed = train_drafter(target, cache, cfg, tmp_path / "b", resume=True, **kwargs)
    assert resumed.state.step == 8 and resumed.drafter.draft_vocab_size == 12
    for name, value in straight.drafter.state_dict().items():
        assert torch.equal(value, resumed.drafter.state_dict()[name]), name
    assert [r["loss"] for r in step_rows(tmp_path / "b")] == \
        [r["loss"] for r in step_rows(tmp_path / "a")]


def test_bad_eagle3_settings_are_user_errors(target, examples, tmp_path):
    cache = eagle3_cache(target, examples, tmp_path / "feats")
    with pytest.raises(TapsError, match="align_steps"):
        train_drafter(target, cache, fast_config(align_steps=0), tmp_path / "r", method="eagle3",
                      progress=False)
    plain = build_cache(target, examples, tmp_path / "plain")
    with pytest.raises(TapsError, match="aux layers"):
        train_drafter(target, plain, fast_config(), tmp_path / "r", method="eagle3",
                      progress=False)
    with pytest.raises(TapsError, match="aux layers"):
        train_drafter(target, cache, fast_config(), tmp_path / "r", method="hass",
                      progress=False)


def test_an_unsupported_target_family_is_one_user_error(examples, tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config

    from taps_ray.models.target import Target

    config = GPT2Config(vocab_size=32, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    model = AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    gpt2 = Target("tiny-gpt2", model, None, torch.device("cpu"), torch.float32)
    cache = eagle3_cache(tiny_target("llama"), examples, tmp_path / "feats")
    with pytest.raises(TapsError, match="model_type 'gpt2' is not supported"):
        train_drafter(gpt2, cache, fast_config(), tmp_path / "r", method="eagle3", progress=False)


def test_eagle3_features_and_draft_vocabulary_defaults(target, examples, tmp_path):
    from taps_ray.training.pipeline import draft_vocab_for, method_aux_layers

    assert method_aux_layers(target, "eagle3") == (0, 1, 2)
    assert method_aux_layers(target, "hass") == ()
    cache = eagle3_cache(target, examples, tmp_path / "feats")
    assert draft_vocab_for(target, cache, 0, "eagle3") is None  # 8192 capped at V = 32: all
    assert draft_vocab_for(target, cache, 0, "eagle2") is None
    assert draft_vocab_for(target, cache, 12, "eagle3").numel() == 12
