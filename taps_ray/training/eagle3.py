"""EAGLE-3 training-time test (TTT): J unrolled draft steps over one batch, as drafting runs.

Pair p of a conversation = (aux_p, x_{p+1}) at position p; its output proposes x_{p+2}. Step k
(0-based) at index t stands for the depth-(k+1) node of a chain drafted from root x_{t+1}
along the TRUE tokens:

    hidden   = fc(aux_t) (k = 0)  |  the step-(k-1) output at index t (k >= 1)
    token    = x_{t+1+k}                     (= pair t + k's token)
    position = t + k
    keys     = step-0 keys at indices <= t (causal)  +  the step-j key at index t, j = 1..k
    target   = the target's distribution of x_{t+2+k} (pair t + k's), on the draft vocabulary

The head's cache grows by P keys per step, so step k's mask is [P, (k+1) P] over
[step-0 keys | step-1 keys | ... | step-k keys]. Losses: soft cross-entropy per step, weight
0.8^k, on pairs whose predicted token is an assistant token; top-1 accuracy per step.
Gradients flow through all steps (the fed-back outputs and cached keys are not detached), as
in the published EAGLE-3 / SpecForge training.
"""

from __future__ import annotations

import torch

from taps_ray.decoding.kv import additive_mask
from taps_ray.training.extract import attention_backends
from taps_ray.training.losses import soft_cross_entropy, top1_agreement

STEP_DECAY = 0.8  # weight of step k's loss: STEP_DECAY ** k (EAGLE-3's published value)


def ttt_mask(pairs: int, k: int, device: torch.device) -> torch.Tensor:
    """[P, (k+1) P] bool: the cached keys of steps 0..k that step k's query t may attend to."""
    t = torch.arange(pairs, device=device)[:, None]
    s = torch.arange(pairs, device=device)[None, :]
    return torch.cat([s <= t] + [s == t] * k, dim=1)


def shift_pairs(x: torch.Tensor, k: int) -> torch.Tensor:
    """[B, P, ...] -> [B, P, ...] with row t = x[:, t + k] (zeros past the end)."""
    if k == 0:
        return x
    return torch.cat([x[:, k:], torch.zeros_like(x[:, :k])], dim=1)


def ttt_forward(
    drafter: torch.nn.Module,  # Eagle3Drafter
    aux: torch.Tensor,  # [B, P, 3d] aux hidden states of pair p (the target's, at p)
    embeds: torch.Tensor,  # [B, P, d] target embeddings of x_{p+1}
    steps: int,  # J >= 1
    autocast: bool = False,  # bf16 autocast (CUDA)
) -> list[torch.Tensor]:  # J outputs [B, P, d]; step k's row t is valid for t < P - k
    """The J unrolled steps; the graph through all of them is kept for one backward."""
    b, pairs = embeds.shape[:2]
    device = embeds.device
    dtype = torch.bfloat16 if autocast else embeds.dtype  # the additive mask matches q
    cache = drafter.new_cache()
    outputs = []
    with attention_backends(device), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
        hidden = drafter.project(aux)  # [B, P, d]
        for k in range(steps):
            pos = (torch.arange(pairs, device=device) + k)[None].expand(b, pairs)
            mask = additive_mask(ttt_mask(pairs, k, device), dtype)  # [1, 1, P, (k+1) P]
            hidden = drafter(hidden, shift_pairs(embeds, k), mask, pos, cache)
            outputs.append(hidden)
    return outputs


@torch.no_grad()
def target_probs(
    final_next: torch.Tensor,  # [N, d] post-norm target states that predict the loss tokens
    head: torch.Tensor,  # [V', d] the target's LM-head rows of the draft vocabulary
) -> torch.Tensor:  # [N, V'] fp32, the target's distribution restricted to the draft vocab
    return torch.softmax(final_next.float() @ head.float().T, dim=-1)


def ttt_losses(
    drafter: torch.nn.Module,  # Eagle3Drafter
    outputs: list[torch.Tensor],  # J x [B, P, d] from ttt_forward
    probs: torch.Tensor,  # [N, V'] target distribution at the loss pairs (row-major order)
    loss_mask: torch.Tensor,  # [B, P] bool, pair p's predicted token x_{p+2} is an assistant one
) -> dict[str, torch.Tensor]:
    """loss = sum_k 0.8^k ce_k; parts ce_k and acc_k (no gradient) per step k."""
    rows, pairs = loss_mask.nonzero(as_tuple=True)  # [N] each
    parts: dict[str, torch.Tensor] = {}
    total = outputs[0].sum() * 0.0  # a zero that backprops when no pair has a loss
    for k, hidden in enumerate(outputs):
        keep = pairs >= k  # step k at index t predicts pair t + k's token
        if not bool(keep.any()):
            parts[f"ce_{k}"] = parts[f"acc_{k}"] = torch.zeros((), device=hidden.device)
            continue
        h = hidden[rows[keep], pairs[keep] - k]  # [N_k, d]
        logq = torch.log_softmax(drafter.logits(h).float(), dim=-1)  # [N_k, V']
        ce = soft_cross_entropy(logq, probs[keep])
        total = total + STEP_DECAY**k * ce
        parts[f"ce_{k}"] = ce.detach()
        parts[f"acc_{k}"] = top1_agreement(logq.detach(), probs[keep])
    parts["loss"] = total
    return parts
