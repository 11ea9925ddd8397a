"""Response regeneration on the default target: the target's own greedy answers, resumable."""

from __future__ import annotations

from taps_ray.data.mixture import build_mixture
from taps_ray.data.records import turn_messages, user_turns
from taps_ray.data.render import render_prompt
from taps_ray.decoding.engine import generate_plain
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.training.regenerate import cached_prefix, regenerate_records


def test_regenerated_answers_are_the_targets_and_resume(default_target, tmp_path, monkeypatch):
    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path))
    records = build_mixture("math=1.0", 3, seed=0).records
    spec = {"test": "regenerate"}
    out = regenerate_records(default_target, records, spec, 6, batch_size=2, shard_size=2,
                             progress=False)
    assert [r.id for r in out] == [r.id for r in records]
    for before, after in zip(records, out, strict=True):
        assert user_turns(after) == user_turns(before)
        prompt = render_prompt(default_target.tokenizer, turn_messages(before, 0, []))
        plain = generate_plain(default_target, prompt, SamplingParams(), 6).tokens
        expected = default_target.tokenizer.decode(plain, skip_special_tokens=True).strip()
        assert after.messages[-1].content == expected  # batched == unbatched greedy

    shards = sorted(tmp_path.rglob("shard-*.jsonl"))
    assert len(shards) == 2
    shards[1].unlink()  # as if interrupted before the last shard
    assert cached_prefix(default_target, records, spec, 6, shard_size=2) == out[:2]
    assert cached_prefix(default_target, records, {"other": 1}, 6, shard_size=2) == []
    first = shards[0].stat().st_mtime_ns
    again = regenerate_records(default_target, records, spec, 6, batch_size=2, shard_size=2,
                               progress=False)
    assert again == out
    assert shards[0].stat().st_mtime_ns == first  # the finished shard was reused


def test_prompts_too_long_to_train_on_are_not_answered(default_target, tmp_path, monkeypatch):
    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path))
    records = build_mixture("math=1.0", 4, seed=1).records
    lengths = [len(render_prompt(default_target.tokenizer, turn_messages(r, 0, [])))
               for r in records]
    cap = sorted(lengths)[1] + 1  # the two shortest prompts fit, the others do not
    out = regenerate_records(default_target, records, {"test": "cap"}, 4, batch_size=4,
                             progress=False, max_prompt_tokens=cap)
    answered = [bool(r.messages[-1].content) for r in out]
    assert answered == [n < cap for n in lengths] and sum(answered) == 2
    assert [r.id for r in out] == [r.id for r in records]
