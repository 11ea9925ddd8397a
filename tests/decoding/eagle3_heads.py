"""EAGLE-3 heads the tiny targets accept, over-fitted in seconds (tests only).

An exact EAGLE-3 oracle does not exist the way EAGLE-2's does (tests/accepted.py): a committed
pair's hidden input is fc(aux_t), made from the target's states at t, while the target's next
feature also needs x_{t+1} in its residual stream. So the head learns, full batch, on the
target's greedy continuations of a few prompts with the trainer's training-time-test unroll
(`training.eagle3.ttt_forward`, which drafts a chain exactly as `Eagle3Session` does), full
batch, without the trainer's data pipeline:

    step k at index t: hidden = fc(aux_t) (k = 0) or step k-1's output at t, token x_{t+1+k},
    position t + k; it sees step 0's keys <= t and steps 1..k's keys at t; its log-softmax
    over the draft vocabulary meets the target's distribution of x_{t+2+k} there (weight 0.8^k).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taps_ray.decoding.engine import generate_plain
from taps_ray.decoding.features import aux_features
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.models.drafter import DrafterMeta
from taps_ray.models.eagle3 import Eagle3Drafter
from taps_ray.training.eagle3 import ttt_forward


def teacher_batch(target, prompts: Sequence[Sequence[int]], max_new: int
                  ) -> torch.Tensor:  # [B, T] prompt + greedy continuation (one length)
    return torch.tensor([list(p) + generate_plain(target, list(p), SamplingParams(), max_new,
                                                  set()).tokens for p in prompts])


def draft_vocab_of(ids: torch.Tensor, vocab: int, extra: int = 6, seed: int = 0) -> torch.Tensor:
    """The tokens of `ids` plus `extra` random others (a reduced vocabulary: d2t is not 0)."""
    gen = torch.Generator().manual_seed(seed)
    others = torch.randperm(vocab, generator=gen)[:extra]
    return torch.cat([ids.flatten(), others]).unique()


def overfit_eagle3(target, prompts: Sequence[Sequence[int]], max_new: int, steps: int = 150,
                   unroll: int = 3, seed: int = 0, lr: float = 1e-2) -> Eagle3Drafter:
    """An Eagle3Drafter over a reduced draft vocabulary, trained on the target's greedy
    continuations of `prompts` (one length) for `steps` full-batch Adam steps."""
    ids = teacher_batch(target, prompts, max_new)
    config = target.model.config
    torch.manual_seed(seed)
    head = Eagle3Drafter(config, draft_vocab_of(ids, config.vocab_size, seed=seed))
    runner = TargetRunner(target.model, head.aux_layers)
    feats = torch.stack([runner.prefill(row) for row in ids])  # [B, T, 4d]
    truth = torch.softmax(runner.logits(feats)[..., head.draft_vocab], dim=-1)  # [B, T, V']
    embeds = runner.embed(ids).float()  # [B, T, d]
    d = embeds.shape[-1]
    head.train().requires_grad_(True)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.0
        outputs = ttt_forward(head, aux_features(feats[:, :-1], d), embeds[:, 1:], unroll)
        for k, out in enumerate(outputs):  # step k's rows t < T - 1 - k are the valid ones
            logp = torch.log_softmax(head.logits(out[:, : out.shape[1] - k]), dim=-1)
            loss = loss - 0.8**k * (truth[:, 1 + k :] * logp).sum(-1).mean()
        loss.backward()
        optimizer.step()
    head.meta = DrafterMeta(name=f"overfit{seed}-eagle3", method="eagle3", layout="eagle3")
    return head.eval().requires_grad_(False)
