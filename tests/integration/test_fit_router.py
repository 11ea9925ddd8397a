"""`taps-ray drafter fit-router` end to end on the default target: held-out prompts, both heads'
trees at every position, the joint fit stored in both taps.json, and route-learned decoding with
the stored scores equal to plain greedy decoding. Untrained heads keep it to seconds (what the
fit finds on trained heads is measured in docs/results.md)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from taps_ray.cli import main
from taps_ray.config.schema import TreeConfig
from taps_ray.data.records import Message
from taps_ray.data.render import render_prompt
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.router import META_KEY
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.models.drafter import META_FILE, load_drafter, save_drafter, untrained_drafter


def extra(folder: str) -> dict:
    return json.loads((Path(folder) / META_FILE).read_text())["extra"]


@pytest.fixture
def two_heads(default_target, tmp_path):
    folders = []
    for seed, name in enumerate(("math-untrained", "chat-untrained")):
        drafter = untrained_drafter(default_target, seed=seed, draft_vocab_size=2048)
        folder = tmp_path / name
        save_drafter(drafter, folder, replace(drafter.meta, name=name))
        folders.append(str(folder))
    return folders


def test_fit_router_cli_stores_one_joint_fit_that_route_learned_decodes_losslessly(
        default_target, two_heads, capsys):
    assert main(["drafter", "fit-router", *two_heads, "--prompts", "4",
                 "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "held out, learned:" in out and "wrote the routing score" in out
    parts = [extra(f)[META_KEY] for f in two_heads]
    assert parts[0]["fit_id"] == parts[1]["fit_id"]
    assert parts[0]["heads"] == ["math-untrained", "chat-untrained"]
    assert len(parts[0]["weights"]) == default_target.model.config.hidden_size
    assert set(parts[0]["fitted_on"]["heldout"]["learned"]) == {"mathinstruct", "sharegpt"}
    heads = [load_drafter(f, default_target) for f in two_heads]
    engine = SpeculativeEngine(default_target, heads, TreeConfig(20, 4, 5), "route-learned")
    prompt = render_prompt(default_target.tokenizer, [Message("user", "Name three colours.")])
    greedy = SamplingParams()
    got = engine.generate(prompt, greedy, 16, stop_token_ids=set())
    assert got.tokens == generate_plain(default_target, prompt, greedy, 16, set()).tokens


def test_fit_router_cli_needs_two_heads(two_heads, capsys):
    assert main(["drafter", "fit-router", two_heads[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert "two or more drafters" in err and err.count("\n") == 0
    for folder in two_heads:  # nothing written
        assert META_KEY not in extra(folder)
