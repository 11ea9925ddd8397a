"""Replay tau (no live decoding) equals live engine tau, step by step, on the same drafter."""

from __future__ import annotations

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.proposer import DrafterSession
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.tree import DraftTree
from taps_ray.evaluation.replay import (
    KnownTrees,
    ReplayPrompt,
    match_length,
    replay,
    teacher_features,
)
from taps_ray.evaluation.runner import Candidate, replay_candidates
from taps_ray.models.drafter import untrained_drafter
from tests.accepted import one_layer_target, oracle_drafter
from tests.tiny import tiny_target

GREEDY = SamplingParams()


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("max_new", [7, 40])
@pytest.mark.parametrize("block", [0, 5, 32], ids=["stepwise", "block5", "block32"])
def test_replay_equals_live_step_by_step(family, max_new, block):
    # an oracle head (tests/accepted.py): accepted along whole paths, so replay must follow
    # deep accepted paths and the cache of accepted tokens, not only bonus tokens
    target = one_layer_target(family)
    tree = TreeConfig(30, 4, 8)
    engine = SpeculativeEngine(target, [oracle_drafter(target, 0.06, seed=3)], tree)
    accepted = []
    for seed in range(3):
        prompt = torch.randint(0, 32, (9,), generator=torch.Generator().manual_seed(seed)).tolist()
        live = engine.generate(prompt, GREEDY, max_new, stop_token_ids=set())
        plain = generate_plain(target, prompt, GREEDY, max_new, stop_token_ids=set()).tokens
        item = ReplayPrompt("toy", f"p{seed}", 0, prompt, plain)
        feats = teacher_features(engine.runner, item)
        result = replay(engine.sessions, engine.strategy, item, feats, tree, block=block)
        assert result.committed == [s.committed for s in live.steps]
        assert result.tau == pytest.approx(live.tau)
        accepted += result.accepted
    assert max(accepted) >= min(4, max_new // 2)  # deep paths were accepted
    assert (sum(accepted) + len(accepted)) / len(accepted) >= 2.0  # pooled tau


def test_replay_stops_at_eos_like_live():
    target = tiny_target("llama")
    prompt = [3, 1, 4, 1, 5]
    reference = generate_plain(target, prompt, GREEDY, 40, stop_token_ids=set()).tokens
    stop = reference[20]
    tree = TreeConfig(30, 4, 8)
    engine = SpeculativeEngine(target, [untrained_drafter(target, seed=3)], tree)
    live = engine.generate(prompt, GREEDY, 40, stop_token_ids={stop})
    plain = generate_plain(target, prompt, GREEDY, 40, stop_token_ids={stop}).tokens
    item = ReplayPrompt("toy", "eos", 0, prompt, plain)
    result = replay(engine.sessions, engine.strategy, item,
                    teacher_features(engine.runner, item), tree)
    assert result.committed == [s.committed for s in live.steps]


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_trees_drafted_at_many_positions_equal_step_by_step_drafts(family):
    target = tiny_target(family)
    tree = TreeConfig(20, 3, 4)
    drafter = untrained_drafter(target, seed=5)
    runner = SpeculativeEngine(target, [drafter], tree).runner
    seq = torch.randint(0, 32, (30,), generator=torch.Generator().manual_seed(0))
    feats = runner.prefill(seq)
    session = DrafterSession(drafter, runner.embed, runner.lm_head.weight)
    known = KnownTrees(session, feats, seq, block=7)
    for length in range(2, 30):
        for s in (session, known):
            s.reset()
            s.extend(feats[: length - 1], seq[1:length])
        want = session.draft(tree)
        got = known.draft(tree)
        assert got.tokens.tolist() == want.tokens.tolist()
        assert got.parents.tolist() == want.parents.tolist()
        # batched matmuls sum in another order: scores agree to fp32 rounding (~5e-6 relative)
        torch.testing.assert_close(got.scores, want.scores, rtol=2e-5, atol=1e-5)
        torch.testing.assert_close(got.entropies, want.entropies, rtol=2e-5, atol=1e-5)
    assert known.cache.get_seq_length() == 28  # tree entries cropped after every block


def test_teacher_features_are_cached_and_a_damaged_or_stale_file_is_recomputed(tmp_path):
    target = tiny_target("llama")
    runner = SpeculativeEngine(target, [untrained_drafter(target)], TreeConfig(8, 2, 2)).runner
    path = tmp_path / "p.t0.n8.pt"
    item = ReplayPrompt("toy", "p", 0, [3, 1, 4], [1, 5, 9], str(path))
    fresh = teacher_features(runner, item)
    assert path.is_file() and not list(tmp_path.glob(".*.tmp*"))
    written = path.stat().st_mtime_ns
    assert torch.equal(teacher_features(runner, item), fresh)
    assert path.stat().st_mtime_ns == written  # loaded, not recomputed
    path.write_bytes(b"not a torch file")
    assert torch.equal(teacher_features(runner, item), fresh)
    other = ReplayPrompt("toy", "p", 0, [3, 1, 4], [2, 6], str(path))  # same file, other tokens
    assert teacher_features(runner, other).shape[0] == 5
    assert torch.equal(torch.load(path, weights_only=True)["ids"], torch.tensor([3, 1, 4, 2, 6]))


def test_candidates_sharing_drafters_get_the_rows_of_separate_stepwise_replays():
    target = tiny_target("llama")
    tree = TreeConfig(12, 3, 3)
    drafters = {"a": untrained_drafter(target, seed=1), "b": untrained_drafter(target, seed=2)}
    candidates = [Candidate("a", "single", ["a"]), Candidate("b", "single", ["b"]),
                  Candidate("route", "route-confidence", ["a", "b"]),
                  Candidate("merged", "merged", ["a", "b"]),
                  Candidate("bandit", "bandit", ["a", "b"]),
                  Candidate("average", "average", ["a", "b"])]
    items = []
    for seed in range(2):
        prompt = torch.randint(0, 32, (7,), generator=torch.Generator().manual_seed(seed)).tolist()
        cont = generate_plain(target, prompt, GREEDY, 25, stop_token_ids=set()).tokens
        items.append(ReplayPrompt("toy", f"p{seed}", 0, prompt, cont))
    rows = replay_candidates(target, drafters, candidates, tree, items, progress=False)
    engines = {c.label: SpeculativeEngine(target, [drafters[n] for n in c.drafter_names], tree,
                                          c.strategy) for c in candidates}
    for row in rows:
        engine = engines[row.strategy]
        item = next(i for i in items if i.prompt_id == row.prompt_id)
        alone = replay(engine.sessions, engine.strategy, item,
                       teacher_features(engine.runner, item), tree, block=0)
        assert (row.steps, row.tau) == (alone.steps, pytest.approx(alone.tau))
    assert len(rows) == len(candidates) * len(items)


def test_match_length_follows_the_longest_matching_path():
    # root -> 5 (node 0) -> 6 (node 2) ; root -> 7 (node 1) -> 8 (node 3)
    tree = DraftTree.make_dummy([-1, -1, 0, 1], [5, 7, 6, 8])
    assert match_length(tree, [7, 8, 9]) == 2
    assert match_length(tree, [5, 6]) == 2
    assert match_length(tree, [5, 9]) == 1
    assert match_length(tree, [9]) == 0
    assert match_length(tree, []) == 0
