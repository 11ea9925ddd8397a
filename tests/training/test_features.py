"""Feature cache: equals a direct forward, resumes shard by shard, rejects other targets."""

from __future__ import annotations

import pytest
import torch

from taps_ray.config.schema import DataConfig
from taps_ray.data.render import RenderedExample
from taps_ray.errors import TapsError
from taps_ray.training import features as features_module
from taps_ray.training.examples import DataSpec
from taps_ray.training.extract import length_batches
from taps_ray.training.features import FeatureCache, OnlineFeatures
from tests.tiny import tiny_target
from tests.training.conftest import build_cache, synthetic_spec


def direct_features(target, ids) -> torch.Tensor:  # [T, d]
    with torch.inference_mode():
        return target.model.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state[0]


def test_length_batches_respect_the_token_budget():
    lengths = [5, 40, 7, 33, 12, 40, 1]
    batches = length_batches(lengths, max_batch_tokens=80)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 80 or len(batch) == 1


def test_cached_features_equal_a_direct_forward(target, examples, tmp_path):
    # A small budget forces several right-padded batches of mixed lengths.
    cache = build_cache(target, examples, tmp_path, shard_size=3, max_batch_tokens=96)
    assert len(cache) == len(examples) and len(cache.manifest["shards"]) == 4
    assert cache.manifest["tokens"] == sum(len(e.input_ids) for e in examples)
    for i, example in enumerate(examples):
        item = cache[i]
        assert item.input_ids.tolist() == example.input_ids
        assert item.loss_mask.tolist() == example.loss_mask
        torch.testing.assert_close(item.features, direct_features(target, example.input_ids),
                                   atol=1e-5, rtol=1e-5)
    reopened = FeatureCache.open(cache.folder, target)
    torch.testing.assert_close(reopened[7].features, cache[7].features)


def test_online_features_equal_the_cache(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path, shard_size=4)
    online = OnlineFeatures(target, examples, "fp32", max_batch_tokens=64)
    assert online.lengths() == cache.lengths()
    for got, want in zip(online.fetch([9, 2, 5]), cache.fetch([9, 2, 5]), strict=True):
        torch.testing.assert_close(got.features, want.features, atol=1e-5, rtol=1e-5)


def test_fp16_cache_stores_half_precision(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path, dtype="fp16")
    assert cache[0].features.dtype == torch.float16
    torch.testing.assert_close(cache[0].features.float(),
                               direct_features(target, examples[0].input_ids),
                               atol=2e-2, rtol=1e-2)


def test_killed_build_leaves_no_cache_and_resume_skips_finished_shards(
    target, examples, tmp_path, monkeypatch
):
    real = features_module.iter_conversation_features
    calls = []

    def dies_on_third_shard(target, chosen, dtype, budget, aux_layers=()):
        calls.append(len(chosen))
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the process were killed mid-build
        yield from real(target, chosen, dtype, budget, aux_layers)

    monkeypatch.setattr(features_module, "iter_conversation_features", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        build_cache(target, examples, tmp_path, shard_size=3)
    spec = synthetic_spec(target, examples)
    folder = FeatureCache.folder_for(spec, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "shard-00000.safetensors", "shard-00001.safetensors"]
    assert FeatureCache.find(spec, tmp_path) is None
    with pytest.raises(TapsError, match="unfinished build"):
        FeatureCache.open(folder)

    # A half-written temp shard from a dead writer must be ignored (and cleaned up).
    (folder / "shard-00002.safetensors.tmp-999999999").write_bytes(b"\x08\x00garbage")
    before = (folder / "shard-00000.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(features_module, "iter_conversation_features", real)
    calls.clear()
    cache = build_cache(target, examples, tmp_path, shard_size=3)
    assert (folder / "shard-00000.safetensors").stat().st_mtime_ns == before
    assert not list(folder.glob("*.tmp-*"))
    assert len(cache) == len(examples)
    torch.testing.assert_close(cache[9].features, direct_features(target, examples[9].input_ids),
                               atol=1e-5, rtol=1e-5)


def test_truncated_final_shard_is_rebuilt(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path, shard_size=3)
    shard = cache.folder / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    (cache.folder / "manifest.json").unlink()
    rebuilt = build_cache(target, examples, tmp_path, shard_size=3)
    torch.testing.assert_close(rebuilt[4].features, direct_features(target, examples[4].input_ids),
                               atol=1e-5, rtol=1e-5)


def test_cache_of_another_target_is_rejected(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path)
    with pytest.raises(TapsError, match="built for target 'tiny-llama'"):
        FeatureCache.open(cache.folder, tiny_target("qwen2"))


def test_cache_key_changes_with_target_and_data(target, examples):
    base = synthetic_spec(target, examples)
    assert synthetic_spec(tiny_target("qwen3"), examples).key() != base.key()
    assert synthetic_spec(target, examples[:5]).key() != base.key()
    assert synthetic_spec(target, examples, "fp16").key() != base.key()


def test_regeneration_and_its_length_cap_are_part_of_the_data_key():
    plain = DataConfig(mixture="math=1.0", total=10)
    keys = {DataSpec.from_config(c).as_dict().__repr__() for c in (
        plain,
        DataConfig(mixture="math=1.0", total=10, regenerate_max_new_tokens=64),  # cap unused
        DataConfig(mixture="math=1.0", total=10, regenerate_batch_size=4),  # never in the key
    )}
    assert len(keys) == 1
    regen = [DataSpec.from_config(DataConfig(mixture="math=1.0", total=10, regenerate=True,
                                             regenerate_max_new_tokens=n)).as_dict()
             for n in (64, 128)]
    assert regen[0] != regen[1] and DataSpec.from_config(plain).as_dict() not in regen


def test_zero_assistant_tokens_is_a_user_error(target, tmp_path):
    silent = [RenderedExample([1, 2, 3, 4], [0, 0, 0, 0]) for _ in range(3)]
    with pytest.raises(TapsError, match="zero assistant tokens"):
        build_cache(target, silent, tmp_path)


def test_build_prints_a_disk_estimate(target, examples, tmp_path, capsys):
    spec = synthetic_spec(target, examples)
    FeatureCache.build(target, examples, spec, root=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "tokens x 64 x 4 B" in err and "GiB" in err and "tokens/s" in err


def test_fp16_overflow_is_a_user_error(target, examples, tmp_path):
    with torch.no_grad():
        target.model.model.norm.weight.mul_(1e6)  # features far beyond fp16's 65504
    with pytest.raises(TapsError, match="feature_dtype to fp32"):
        build_cache(target, examples, tmp_path, dtype="fp16")


def test_a_finished_shard_of_other_conversations_is_rebuilt(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path, shard_size=3)
    (cache.folder / "manifest.json").unlink()
    changed = [*examples[:4], RenderedExample([5] * 25, [0] * 5 + [1] * 20), *examples[5:]]
    rebuilt = build_cache(target, changed, tmp_path, shard_size=3)  # same spec, new data
    torch.testing.assert_close(rebuilt[4].features, direct_features(target, [5] * 25),
                               atol=1e-5, rtol=1e-5)
