"""Tiny random targets (2 layers, 64-d) of several families for fast CPU tests."""

from __future__ import annotations

import torch

from taps_ray.models.target import Target

FAMILIES = ("llama", "qwen2", "qwen3")


def tiny_config(family: str, vocab: int = 32):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
    return cls(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        initializer_range=0.3,  # peaked logits: no near-ties between greedy candidates
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def tiny_target(family: str = "llama", vocab: int = 32, seed: int = 0) -> Target:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab), dtype=torch.float32)
    model.eval().requires_grad_(False)
    return Target(f"tiny-{family}", model, None, torch.device("cpu"), torch.float32)
