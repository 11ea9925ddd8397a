"""Drafters the target accepts, and the statistics that prove losslessness with them.

Lossless and replay tests mean little when no draft token is accepted: a strategy that accepted
nothing would still emit the target's tokens. These helpers give cheap drafters that tiny random
targets do accept, each a real drafter the engine, strategies and replay take as they are:

- `oracle_drafter`: an EAGLE head that *is* a one-layer target (exact at noise 0; `noise`
  perturbs its weights, lowering acceptance), so it proposes the target's own next tokens at
  T = 0 and the target's own distribution at T = 1;
- `overfit_drafter`: an untrained head trained for a few seconds on the target's greedy
  continuations of some prompts (the project's HASS passes and losses), any target depth;
- `PromptLookupDrafter` on a `markov_target`, whose text cycles.

At T > 0 a `markov_target` (attention output zeroed: the next token depends on the last one
only) has an exact law for long outputs: each transition a -> b has probability P[a, b]. The
transition counts of many long generations are then tested against P (`transition_p_value`,
and `top_share_p_value` aimed at skewed acceptance),
so acceptance over hundreds of steps (routing, bandit switches, tree cuts, plain fallback) is
checked, not only the first step's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from taps_ray.decoding.engine import GenerationResult, generate_plain
from taps_ray.decoding.router import RoutingScore
from taps_ray.decoding.sampling import SamplingParams, logits_to_probs
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.models.drafter import EagleDrafter, untrained_drafter
from taps_ray.models.target import Target
from taps_ray.training.alignment import aligned_passes
from taps_ray.training.losses import LossWeights, drafter_losses, target_side
from tests.tiny import tiny_config

GREEDY = SamplingParams()


# --- targets ----------------------------------------------------------------------------------


def one_layer_target(family: str = "llama", vocab: int = 32, seed: int = 0) -> Target:
    """A tiny random target of one decoder layer: an EAGLE head can copy it exactly."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, vocab)
    config.num_hidden_layers = 1
    config.max_position_embeddings = 4096
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval().requires_grad_(False)
    return Target(f"tiny1-{family}", model, None, torch.device("cpu"), torch.float32)


def markov_target(vocab: int = 8, seed: int = 5, family: str = "llama") -> Target:
    """A one-layer target whose attention adds nothing: the next token's law depends on the
    last token alone (a Markov chain over the vocabulary, position-free)."""
    target = one_layer_target(family, vocab, seed)
    target.model.model.layers[0].self_attn.o_proj.weight.zero_()
    return target


def transition_law(target: Target, params: SamplingParams) -> torch.Tensor:  # [V, V] float64
    """P[a, b] = probability that a `markov_target` emits b after a, under `params`."""
    vocab = target.model.config.vocab_size
    with torch.inference_mode():
        logits = target.model(torch.arange(vocab)[:, None]).logits[:, 0]  # [V, V]
    return torch.stack([logits_to_probs(row, params) for row in logits]).double()


# --- drafters ---------------------------------------------------------------------------------


def oracle_drafter(target: Target, noise: float = 0.0, seed: int = 0) -> EagleDrafter:
    """An EAGLE head (taps layout) equal to the one-layer `target` itself, plus weight noise.

    Pair t = (f_t, x_{t+1}) sits at position t: fc = [I | 0] passes embed(x_{t+1}) alone, and
    the head's decoder (input norm, layer, final norm) is the target's, so its output is the
    target's feature of x_{t+1} (RoPE sees the same relative positions, shifted by one). Noise
    adds N(0, noise^2 / 2d) to every fc weight: acceptance falls as noise grows (T = 0, 60
    tokens, tree (12, 3, 3): tau ~4 at 0, ~2.7 at 0.06, ~1.6 at 0.15).
    """
    layers = target.model.config.num_hidden_layers
    if layers != 1:
        raise ValueError(f"an oracle head copies a one-layer target, this one has {layers}")
    drafter = untrained_drafter(target, seed=seed)
    base = target.model.model
    drafter.decoder.layers[0].load_state_dict(base.layers[0].state_dict())
    drafter.decoder.norm.load_state_dict(base.norm.state_dict())
    d = target.model.config.hidden_size
    weight = torch.cat([torch.eye(d), torch.zeros(d, d)], dim=1)  # [d, 2d]: embedding half
    gen = torch.Generator().manual_seed(seed)
    weight += noise * torch.randn(d, 2 * d, generator=gen) / (2 * d) ** 0.5
    drafter.fc.weight.copy_(weight)
    drafter.fc.bias.zero_()
    drafter.meta.name, drafter.meta.method = f"oracle{noise:g}-eagle2", "eagle2"
    return drafter


def overfit_drafter(target: Target, prompts: Sequence[Sequence[int]], max_new: int,
                    steps: int = 300, seed: int = 0, lr: float = 3e-3) -> EagleDrafter:
    """An untrained head trained on the target's greedy continuations of `prompts`.

    Full-batch Adam over every pair of prompt + continuation, with 3 HASS alignment passes so
    the head also learns to draft from its own features (tree depth >= 2). The prompts must
    have one length (one unpadded batch). A few seconds for the 2-layer tiny targets.
    """
    ids = torch.tensor([list(p) + generate_plain(target, list(p), GREEDY, max_new, set()).tokens
                        for p in prompts])  # [B, T]
    runner = TargetRunner(target.model)
    feats = torch.stack([runner.prefill(row) for row in ids])  # [B, T, d]
    head = runner.lm_head.weight
    truth = target_side(feats[:, 1:].reshape(-1, feats.shape[-1]), head)
    embeds = runner.embed(ids[:, 1:]).float()  # [B, T-1, d] x_{t+1}
    drafter = untrained_drafter(target, seed=seed).train().requires_grad_(True)
    optimizer = torch.optim.Adam(drafter.parameters(), lr=lr)
    weights = LossWeights(w_feature=1.0, w_ce=1.0)
    for _ in range(steps):
        optimizer.zero_grad()
        for pred in aligned_passes(drafter, feats[:, :-1], embeds, passes=3):
            pred = pred.reshape(-1, pred.shape[-1])
            drafter_losses(pred, truth, head, weights)["loss"].backward()
        optimizer.step()
    drafter.meta.name, drafter.meta.method = f"overfit{seed}-hass", "hass"
    return drafter.eval().requires_grad_(False)


# --- what was accepted ------------------------------------------------------------------------


@dataclass(frozen=True)
class Acceptance:
    """Acceptance pooled over generations: tau (accepted + bonus per step), deepest path."""

    steps: int
    accepted: int  # draft tokens accepted in all steps
    deepest: int  # longest accepted path of one step
    tau: float

    def __str__(self) -> str:
        return f"tau {self.tau:.2f} over {self.steps} steps, deepest accepted path {self.deepest}"


def acceptance(results: Iterable[GenerationResult]) -> Acceptance:
    """Pooled over speculative steps only (plain fallback steps verify no draft)."""
    steps = [s for r in results for s in r.steps if s.speculative]
    accepted = sum(s.accepted for s in steps)
    return Acceptance(len(steps), accepted, max((s.accepted for s in steps), default=0),
                      (accepted + len(steps)) / max(len(steps), 1))


def assert_accepted(results: Iterable[GenerationResult], min_tau: float, min_depth: int
                    ) -> Acceptance:
    """Fail unless the drafts were really accepted: pooled tau and deepest path reach the bar."""
    got = acceptance(results)
    assert got.tau >= min_tau and got.deepest >= min_depth, (
        f"drafts barely accepted: {got} (want tau >= {min_tau}, depth >= {min_depth})")
    return got


def routes(results: Iterable[GenerationResult]) -> set[int]:
    """Drafters whose trees were verified in some speculative step."""
    return {s.route for r in results for s in r.steps if s.speculative and s.route is not None}


# --- the law of long outputs ------------------------------------------------------------------


def transition_counts(runs: Iterable[tuple[Sequence[int], Sequence[int]]], vocab: int
                      ) -> torch.Tensor:  # [V, V] float64
    """Counts of a -> b over (prompt, new tokens) runs, from the prompt's last token on."""
    counts = torch.zeros(vocab, vocab, dtype=torch.float64)
    for prompt, new in runs:
        seq = [prompt[-1], *new]
        for a, b in zip(seq, seq[1:], strict=False):
            counts[a, b] += 1
    return counts


def transition_p_value(counts: torch.Tensor, law: torch.Tensor, min_expected: float = 5.0
                       ) -> float:
    """Chi-square p-value of transition counts [V, V] against the chain's law P [V, V].

    Row a is multinomial(n_a, P[a]) (Anderson & Goodman 1957): its cells expected below
    `min_expected` are pooled into one, each row adds (cells - 1) degrees of freedom. A count
    in a cell of probability 0 gives p = 0.
    """
    if bool((counts[law <= 1e-12] > 0).any()):
        return 0.0
    stat, dof = 0.0, 0
    for observed, p in zip(counts, law, strict=True):
        expected = observed.sum() * p
        big = expected >= min_expected
        obs, exp = observed[big], expected[big]
        small_obs, small_exp = observed[~big].sum(), expected[~big].sum()
        if small_exp >= min_expected or not big.any():
            obs, exp = torch.cat([obs, small_obs[None]]), torch.cat([exp, small_exp[None]])
        else:  # too small alone: joins the smallest big cell
            low = int(exp.argmin())
            obs[low], exp[low] = obs[low] + small_obs, exp[low] + small_exp
        keep = exp > 0
        if int(keep.sum()) < 2:
            continue
        stat += float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
        dof += int(keep.sum()) - 1
    if dof == 0:
        return 1.0
    half = torch.tensor(dof / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(half, torch.tensor(stat / 2, dtype=torch.float64)))


def top_share_p_value(counts: torch.Tensor, law: torch.Tensor) -> float:
    """Two-sided p-value that the chain went to each row's most likely token as often as P says.

    Sum over rows of the count of b = argmax P[a] minus its expectation n_a P[a, b], over its
    standard deviation: about N(0, 1) under P (one binomial per row, Markov chain CLT). One
    degree of freedom aimed where a skewed acceptance shows first: drafted tokens are the
    likely ones, so accepting them too often (or too rarely) moves this share.
    """
    top = law.argmax(-1)  # [V]
    n = counts.sum(-1)  # [V] transitions out of each token
    p = law.gather(1, top[:, None])[:, 0]
    observed = counts.gather(1, top[:, None])[:, 0]
    var = float((n * p * (1 - p)).sum())
    if var == 0:
        return 1.0
    z = float((observed - n * p).sum()) / var**0.5
    return float(torch.special.erfc(torch.tensor(abs(z) / 2**0.5, dtype=torch.float64)))


def sign_routing_scores(names: Sequence[str], hidden_size: int, scale: float
                        ) -> list[RoutingScore]:
    """Routing scores in the fitted-together form, set by hand: head k scores
    (-1)^k * scale * unit 0 of its hidden state (+ its log-confidence), so both heads win on
    some steps. For tests where only losslessness matters; fitted scores: test_router.py."""
    return [RoutingScore("by-hand", tuple(names), 0.0, 1.0,
                         ((-1.0) ** k * scale,) + (0.0,) * (hidden_size - 1))
            for k in range(len(names))]
