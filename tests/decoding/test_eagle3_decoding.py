"""EAGLE-3 heads decode, replay and batch losslessly, through every strategy.

The head (tests/decoding/eagle3_heads.py) is over-fitted in ~2 s on a 2-layer tiny target's
greedy continuations with a training-time-test unroll, over a reduced draft vocabulary (d2t is
not 0). It is accepted deep on its prompts (measured: tau 3.9, paths of depth 4 with tree
(12, 3, 3)), so a path that lost or skewed accepted tokens fails the token checks.
"""

from __future__ import annotations

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.adaptive import AdaptivePolicy
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.features import aux_features, final_features
from taps_ray.decoding.kv import causal_mask
from taps_ray.decoding.prompt_lookup import PromptLookupDrafter
from taps_ray.decoding.proposer import (
    DrafterSession,
    Eagle3Session,
    _head_groups,
    draft_many,
    make_session,
)
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.scheduler import BatchScheduler, BatchSettings, SequenceRequest
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.errors import TapsError
from taps_ray.evaluation.confidence import collect
from taps_ray.evaluation.replay import ReplayPrompt, features_file, replay, teacher_features
from taps_ray.evaluation.runner import Candidate, replay_candidates
from taps_ray.models.drafter import EagleDrafter, untrained_drafter
from taps_ray.models.eagle3 import Eagle3Drafter
from tests.accepted import assert_accepted
from tests.decoding.eagle3_heads import overfit_eagle3
from tests.steady import LosingGuard, SteadyCostPolicy
from tests.tiny import tiny_target

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only contend

GREEDY = SamplingParams()
SAMPLED = SamplingParams(temperature=1.0)
TREE = TreeConfig(12, 3, 3)  # paths up to depth 4
VOCAB, NEW = 64, 30


def prompts(n: int = 3) -> list[list[int]]:
    return [torch.randint(0, VOCAB, (8,), generator=torch.Generator().manual_seed(k)).tolist()
            for k in range(n)]


@pytest.fixture(scope="module")
def setup():
    """(target, EAGLE-3 head fitted on prompts(), an untrained EAGLE-2 head)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    target = tiny_target("llama", vocab=VOCAB)
    head = overfit_eagle3(target, prompts(), NEW + 10, steps=150)
    torch.set_num_threads(before)
    return target, head, untrained_drafter(target, seed=3)


def greedy(engine, prompt, new=NEW):
    return engine.generate(prompt, GREEDY, new, stop_token_ids=set())


def plain(target, prompt, params=GREEDY, new=NEW, seed=0):
    return generate_plain(target, prompt, params, new, set(), seed).tokens


# --- features and the session ---------------------------------------------------------------


def test_features_with_aux_layers_carry_the_hf_hidden_states_and_the_same_logits(setup):
    target, head, _ = setup
    seq = torch.tensor(prompts()[0])
    plain_feats = TargetRunner(target.model).prefill(seq)  # [L, d]
    runner = TargetRunner(target.model, head.aux_layers)
    feats = runner.prefill(seq)  # [L, 4d]
    d = plain_feats.shape[-1]
    assert feats.shape == (seq.numel(), 4 * d)
    torch.testing.assert_close(final_features(feats, d), plain_feats)
    states = target.model(seq[None], output_hidden_states=True).hidden_states
    want = torch.cat([states[i][0] for i in head.aux_layers], dim=-1)
    torch.testing.assert_close(aux_features(feats, d), want)
    assert torch.equal(runner.logits(feats), TargetRunner(target.model).logits(plain_feats))


def test_drafting_a_chain_equals_running_the_head_step_by_step(setup):
    """top_k 1: the session's tree is a chain; by hand, each depth reruns the whole sequence
    (committed pairs fed fc(aux), drafted tokens their parent's output) without a cache."""
    target, head, _ = setup
    runner = TargetRunner(target.model, head.aux_layers)
    seq = torch.tensor(prompts()[1] + plain(target, prompts()[1], new=6))
    feats = runner.prefill(seq)
    session = make_session(head, runner.embed, runner.lm_head.weight)
    assert isinstance(session, Eagle3Session)
    session.reset()
    session.extend(feats[:-1], seq[1:])
    chain = session.draft(TreeConfig(total_tokens=4, depth=3, top_k=1))
    hidden = head.project(aux_features(feats[:-1], feats.shape[-1] // 4))  # [S-1, d]
    tokens, score = seq[1:], 0.0
    with torch.inference_mode():
        for depth in range(4):
            n = tokens.numel()
            out = head(hidden[None], runner.embed(tokens)[None], causal_mask(0, n, torch.float32,
                                                                             "cpu"))[0]
            logp = torch.log_softmax(head.logits(out[-1]), dim=-1)
            best = int(logp.argmax())
            score += float(logp[best])
            token = head.to_target_ids(torch.tensor(best))
            assert int(chain.tokens[depth]) == int(token)
            assert chain.parents[depth] == depth - 1
            assert float(chain.scores[depth]) == pytest.approx(score, abs=1e-4)
            hidden, tokens = torch.cat([hidden, out[-1:]]), torch.cat([tokens, token[None]])


def test_lockstep_groups_only_sessions_of_one_head(setup):
    target, head, _ = setup
    runner = TargetRunner(target.model, head.aux_layers)
    same_vocab = EagleDrafter(target.model.config, head.draft_vocab)
    other = overfit_like(target, head)
    sessions = [make_session(d, runner.embed, runner.lm_head.weight)
                for d in (head, same_vocab, other, head)]
    assert [type(s) for s in sessions] == [Eagle3Session, DrafterSession, Eagle3Session,
                                           Eagle3Session]
    assert _head_groups(sessions) == [[0, 3], [1], [2]]
    seq = torch.tensor(prompts()[2])
    feats = runner.prefill(seq)
    for s in sessions:
        s.reset()
        s.extend(feats[:-1], seq[1:])
    together = draft_many(sessions, TREE)
    for s, tree in zip(sessions, together, strict=True):
        alone = s.draft(TREE)
        assert tree.tokens.tolist() == alone.tokens.tolist()
        torch.testing.assert_close(tree.scores, alone.scores, rtol=2e-5, atol=1e-5)


def overfit_like(target, head) -> Eagle3Drafter:
    """Another EAGLE-3 head over the same draft vocabulary (untrained)."""
    torch.manual_seed(9)
    return Eagle3Drafter(target.model.config, head.draft_vocab).eval()


# --- lossless decoding ------------------------------------------------------------------------


def test_single_is_token_exact_at_t0_and_accepted_deep(setup):
    target, head, _ = setup
    engine = SpeculativeEngine(target, [head], TREE)
    results = [greedy(engine, p) for p in prompts()]
    for p, r in zip(prompts(), results, strict=True):
        assert r.tokens == plain(target, p)
    got = assert_accepted(results, 3.0, 3)  # measured tau 3.9, deepest path 4
    assert got.deepest >= 3


CASES = {  # name: (strategy, options, drafters: "3" EAGLE-3, "2" EAGLE-2, "L" lookup, policy)
    "average": ("average", {}, "33", None),
    "route-confidence-step": ("route-confidence", {"granularity": "step"}, "32", None),
    "route-confidence-prompt": ("route-confidence", {"granularity": "prompt"}, "23", None),
    "route-entropy-step": ("route-entropy", {"granularity": "step"}, "32", None),
    "route-entropy-prompt": ("route-entropy", {"granularity": "prompt"}, "32", None),
    "merged-sum": ("merged", {"budget": "sum"}, "32", None),
    "merged-matched": ("merged", {"budget": "matched"}, "23", None),
    "merged-two-eagle3": ("merged", {"budget": "sum"}, "3x", None),
    "bandit": ("bandit", {}, "23", None),
    "lookup+eagle3": ("merged", {"budget": "sum"}, "L3", None),
    "adaptive-cut": ("single", {}, "3", "cut"),
    "fallback-plain": ("single", {}, "3", "fallback"),
}


def engine_for(name: str, setup) -> SpeculativeEngine:
    target, head, eagle2 = setup
    strategy, options, kinds, policy = CASES[name]
    pick = {"3": head, "2": eagle2, "L": PromptLookupDrafter(), "x": overfit_like(target, head)}
    policies = {None: None, "fallback": AdaptivePolicy(guard=LosingGuard(), cut=False),
                "cut": SteadyCostPolicy(verify_cost=lambda n: 1.0 + 0.25 * n, guard=None)}
    return SpeculativeEngine(target, [pick[k] for k in kinds], TREE, strategy,
                             policy=policies[policy], **options)


@pytest.mark.parametrize("name", list(CASES))
def test_every_strategy_with_eagle3_heads_is_token_exact_at_t0(setup, name):
    target = setup[0]
    engine = engine_for(name, setup)
    results = [greedy(engine, p) for p in prompts(2)]
    for p, r in zip(prompts(2), results, strict=True):
        assert r.tokens == plain(target, p)
    assert_accepted(results, 1.5, 2)  # measured tau 1.6 (route-entropy-prompt) to 4.2


@pytest.mark.parametrize("name", ["single", "merged-sum", "route-confidence-step", "bandit"])
def test_sampled_tokens_equal_plain_sampling_with_the_same_seed(setup, name):
    target, head, _ = setup
    engine = (SpeculativeEngine(target, [head], TREE) if name == "single"
              else engine_for(name, setup))
    for seed, p in enumerate(prompts(2)):
        got = engine.generate(p, SAMPLED, NEW, stop_token_ids=set(), seed=seed)
        assert got.tokens == plain(target, p, SAMPLED, seed=seed)


def test_eagle3_heads_reading_other_layers_are_refused_together(setup):
    target, head, _ = setup
    other = Eagle3Drafter(target.model.config, aux_layers=(0, 0, 1))
    with pytest.raises(TapsError, match="aux_layers"):
        SpeculativeEngine(target, [head, other], TREE, "merged")


# --- replay and the batch ---------------------------------------------------------------------


@pytest.mark.parametrize("block", [0, 5], ids=["stepwise", "block5"])
@pytest.mark.parametrize("name", ["single", "merged-sum"])
def test_replay_equals_live_at_t0(setup, name, block):
    target, head, _ = setup
    engine = (SpeculativeEngine(target, [head], TREE) if name == "single"
              else engine_for(name, setup))
    for k, p in enumerate(prompts(2)):
        live = greedy(engine, p)
        item = ReplayPrompt("toy", f"p{k}", 0, p, plain(target, p))
        feats = teacher_features(engine.runner, item)
        result = replay(engine.sessions, engine.strategy, item, feats, TREE, block=block)
        assert result.committed == [s.committed for s in live.steps]
        assert result.accepted == [s.accepted for s in live.steps]


def test_replay_candidates_with_eagle3_and_eagle2_heads_equal_their_stepwise_replays(setup):
    target, head, eagle2 = setup
    drafters = {"e3": head, "e2": eagle2}
    candidates = [Candidate("e3", "single", ["e3"]), Candidate("e2", "single", ["e2"]),
                  Candidate("route", "route-confidence", ["e2", "e3"]),
                  Candidate("merged", "merged", ["e3", "e2"])]
    items = [ReplayPrompt("toy", f"p{k}", 0, p, plain(target, p))
             for k, p in enumerate(prompts(2))]
    rows = replay_candidates(target, drafters, candidates, TREE, items, progress=False)
    for row in rows:
        cand = next(c for c in candidates if c.label == row.strategy)
        engine = SpeculativeEngine(target, [drafters[n] for n in cand.drafter_names], TREE,
                                   cand.strategy)
        item = next(i for i in items if i.prompt_id == row.prompt_id)
        alone = replay(engine.sessions, engine.strategy, item,
                       teacher_features(engine.runner, item), TREE, block=0)
        assert (row.steps, row.tau) == (alone.steps, pytest.approx(alone.tau))
    taus = {r.strategy: r.tau for r in rows if r.prompt_id == "p0"}
    assert taus["e3"] >= 3.0 and taus["merged"] >= taus["e2"]


def test_confidence_pairs_of_an_eagle3_head(setup):
    target, head, _ = setup
    items = [ReplayPrompt("toy", "p0", 0, prompts()[0], plain(target, prompts()[0]))]
    pairs = collect(target, head, items, TREE)[0]
    assert pairs.scores.numel() == pairs.accepted.numel() > 0
    assert pairs.accepted.sum() >= NEW // 2  # most positions accept a deep path


def test_teacher_features_with_aux_layers_are_cached_beside_the_plain_ones(setup, tmp_path):
    target, head, _ = setup
    path = tmp_path / "p.t0.n8.pt"
    item = ReplayPrompt("toy", "p", 0, [3, 1, 4], [1, 5, 9], str(path))
    plain_feats = teacher_features(TargetRunner(target.model), item)
    runner = TargetRunner(target.model, head.aux_layers)
    wide = teacher_features(runner, item)
    aux_path = features_file(path, head.aux_layers)
    assert aux_path.name == "p.t0.n8.aux0-1-2.pt" and aux_path.is_file() and path.is_file()
    assert wide.shape[-1] == 4 * plain_feats.shape[-1]
    assert torch.equal(teacher_features(runner, item), wide)  # loaded from its own file
    assert torch.equal(teacher_features(TargetRunner(target.model), item), plain_feats)


def test_batch_with_eagle3_requests_equals_solo_decoding(setup):
    target, head, eagle2 = setup
    reqs = []
    for i, p in enumerate(prompts() * 2):
        drafters = [[head], [eagle2], None, [head, eagle2]][i % 4]
        engine = None if drafters is None else SpeculativeEngine(
            target, drafters, TREE, "single" if len(drafters) == 1 else "merged")
        params = GREEDY if i < 3 else SAMPLED
        reqs.append(SequenceRequest(p, params, NEW - i, set(), i, engine))
    with BatchScheduler(target, BatchSettings(max_batch_size=4, prefill_chunk=4)) as scheduler:
        handles = [scheduler.submit(r) for r in reqs]
        outs = [[t for c in h.chunks(timeout=60) for t in c.tokens] for h in handles]
    for r, got in zip(reqs, outs, strict=True):
        assert got == plain(target, list(r.prompt_ids), r.sampling, r.max_new_tokens, r.seed)
    assert scheduler.aux_layers == head.aux_layers


def test_batch_refuses_a_request_whose_heads_read_other_layers(setup):
    target, head, _ = setup
    other = Eagle3Drafter(target.model.config, aux_layers=(0, 0, 1))
    scheduler = BatchScheduler(target)  # not started: submit only queues
    scheduler.submit(SequenceRequest(prompts()[0], engine=SpeculativeEngine(target, [head], TREE)))
    with pytest.raises(ValueError, match="aux_layers"):
        scheduler.submit(SequenceRequest(prompts()[0],
                                         engine=SpeculativeEngine(target, [other], TREE)))
