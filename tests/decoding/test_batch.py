"""BatchedRunner: every row of the padded batch computes what the sequence computes alone."""

from __future__ import annotations

import pytest
import torch

from taps_ray.decoding.batch import BatchedRunner, batch_tree_mask
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.decoding.tree import DraftTree, tree_attention_mask, tree_position_offsets
from tests.tiny import tiny_target

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only cost

ATOL = 1e-4  # fp32 batched matmuls may differ from batch 1 in the last bits


def _block(tree: DraftTree, gen: torch.Generator):
    ids = torch.cat([torch.tensor([3]), torch.randint(0, 32, (tree.size,), generator=gen)])
    return ids, tree_position_offsets(tree), tree_attention_mask(tree)


def _one(token: int):
    return torch.tensor([token]), torch.zeros(1, dtype=torch.long), torch.ones(1, 1, dtype=bool)


@pytest.fixture(scope="module")
def target():
    return tiny_target("qwen3")


def test_rows_match_single_sequences_through_verify_commit_and_remove(target):
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 32, (n,), generator=gen) for n in (5, 11, 8)]
    alone, batch = [], BatchedRunner(target.model)
    for prompt in prompts:
        runner = TargetRunner(target.model)
        runner.prefill(prompt)
        alone.append(runner)
        # a prompt prefilled in two chunks joins the batch
        joiner = TargetRunner(target.model)
        joiner.prefill(prompt[:3])
        joiner.extend(prompt[3:])
        assert batch.add(joiner.cache, joiner.length) == len(alone) - 1
    trees = [DraftTree.make_dummy([-1, 0, 0, 1]), DraftTree.make_dummy([]),
             DraftTree.make_dummy([-1, 0, 1, 2, -1, 4])]
    blocks = [_block(t, gen) for t in trees]
    feats = batch.forward(*zip(*blocks, strict=True))
    keeps = [torch.tensor([0, 1, 3]), torch.tensor([0]), torch.tensor([0, 5, 6])]
    for i, runner in enumerate(alone):
        past = runner.length
        single = runner.verify(*blocks[i])
        torch.testing.assert_close(feats[i, : len(blocks[i][0])], single, atol=ATOL, rtol=0)
        runner.commit(past, keeps[i])
    batch.commit(keeps)
    assert batch.lengths == [r.length for r in alone] == [8, 12, 11]
    assert batch.cache.get_seq_length() == 12  # cut at the longest row
    batch.remove([1])
    feats = batch.forward(*zip(_one(9), _one(4), strict=True))
    for row, i in enumerate([0, 2]):
        single = alone[i].step([9, 4][row])
        torch.testing.assert_close(feats[row, :1], single, atol=ATOL, rtol=0)
    batch.commit([torch.tensor([0])] * 2)
    assert batch.lengths == [9, 12]
    batch.remove([0, 1])
    assert batch.size == 0 and batch.cache is None


def test_padded_queries_see_only_themselves():
    trees = [torch.ones(1, 1, dtype=torch.bool), torch.tensor([[1, 0], [1, 1]], dtype=bool)]
    mask = batch_tree_mask([2, 4], 2, trees, torch.float32, torch.device("cpu"))
    allowed = mask[:, 0] == 0  # [B, q, L + q]
    assert allowed.shape == (2, 2, 6)
    assert allowed[0].tolist() == [[1, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]
    assert allowed[1].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]


def test_forward_and_commit_check_their_row_counts(target):
    batch = BatchedRunner(target.model)
    runner = TargetRunner(target.model)
    runner.prefill(torch.arange(4))
    batch.add(runner.cache, runner.length)
    with pytest.raises(ValueError, match="one token block per row"):
        batch.forward(*zip(_one(1), _one(2), strict=True))
    with pytest.raises(ValueError, match="one keep list per row"):
        batch.commit([])
