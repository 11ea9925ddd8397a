"""The drafter's two layouts: "taps" (input + final norm) and the published EAGLE-1/2 "eagle"
(neither). The layout is recorded in taps.json, old files load as "taps", and every decoding
path (strategies, replay, the drafter specs serve/generate/bench load) runs either."""

from __future__ import annotations

import json

import pytest
import torch

from taps_ray.config.loader import from_dict
from taps_ray.config.schema import DrafterConfig, TreeConfig
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.prompt_lookup import load_drafter_spec
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.errors import TapsError
from taps_ray.evaluation.replay import ReplayPrompt, replay, teacher_features
from taps_ray.models.drafter import (
    META_FILE,
    DrafterMeta,
    EagleDrafter,
    load_drafter,
    save_drafter,
    untrained_drafter,
)
from taps_ray.training.averaging import average_drafters
from tests.tiny import tiny_target

TREE = TreeConfig(12, 3, 4)


pytestmark = pytest.mark.usefixtures("one_thread")
STRATEGIES = [
    ("single", {}),
    ("route-confidence", {"granularity": "step"}),
    ("route-entropy", {"granularity": "prompt"}),
    ("merged", {"budget": "sum"}),
    ("merged", {"budget": "matched"}),
    ("bandit", {}),
]


def test_eagle_layout_has_no_input_or_final_norm():
    target = tiny_target("llama")
    eagle = set(untrained_drafter(target, layout="eagle").state_dict())
    taps = set(untrained_drafter(target).state_dict())
    assert taps - eagle == {"decoder.norm.weight", "decoder.layers.0.input_layernorm.weight"}
    assert not eagle - taps


def test_eagle_layout_output_is_the_layer_output_without_norms():
    target = tiny_target("qwen2")
    drafter = untrained_drafter(target, seed=2, layout="eagle")
    x, e = torch.randn(1, 4, 64), torch.randn(1, 4, 64)
    h = drafter.fc(torch.cat([e, x], -1))
    layer = drafter.decoder.layers[0]
    assert type(layer.input_layernorm).__name__ == "Identity"
    # not normalised: a final RMSNorm would give rows of RMS ~ its weight (1 at init)
    out = drafter(x, e)
    assert not torch.allclose(out.pow(2).mean(-1).sqrt(), torch.ones(1, 4), atol=1e-2)
    assert out.shape == h.shape


def test_layout_is_recorded_and_round_trips(tmp_path):
    target = tiny_target("llama")
    drafter = untrained_drafter(target, seed=1, layout="eagle")
    save_drafter(drafter, tmp_path / "d", DrafterMeta(name="math-eagle2"))  # meta says taps
    assert json.loads((tmp_path / "d" / META_FILE).read_text())["layout"] == "eagle"
    again = load_drafter(tmp_path / "d", target)
    assert again.layout == "eagle" and again.meta.layout == "eagle"
    x, e = torch.randn(1, 5, 64), torch.randn(1, 5, 64)
    assert torch.equal(again(x, e), drafter(x, e))


def test_files_without_a_layout_load_as_taps(tmp_path):
    target = tiny_target("llama")
    drafter = untrained_drafter(target, seed=1)
    path = save_drafter(drafter, tmp_path / "d", DrafterMeta())
    meta = json.loads((path / META_FILE).read_text())
    del meta["layout"]  # a drafter saved before issue 17
    (path / META_FILE).write_text(json.dumps(meta))
    again = load_drafter(path, target)
    assert again.layout == "taps"
    x, e = torch.randn(1, 3, 64), torch.randn(1, 3, 64)
    assert torch.equal(again(x, e), drafter(x, e))


def test_unknown_layout_is_a_clear_error(tmp_path):
    target = tiny_target("llama")
    path = save_drafter(untrained_drafter(target), tmp_path / "d", DrafterMeta())
    meta = json.loads((path / META_FILE).read_text())
    (path / META_FILE).write_text(json.dumps({**meta, "layout": "medusa"}))
    with pytest.raises(TapsError, match="layout 'medusa' is unknown"):
        load_drafter(path, target)
    with pytest.raises(TapsError, match="'drafter.layout' must be one of taps, eagle"):
        from_dict(DrafterConfig, {"layout": "medusa"}, "drafter")
    assert from_dict(DrafterConfig, {"layout": "eagle"}, "drafter").layout == "eagle"


def test_weights_of_the_other_layout_are_refused(tmp_path):
    target = tiny_target("llama")
    path = save_drafter(untrained_drafter(target), tmp_path / "d", DrafterMeta())
    meta = json.loads((path / META_FILE).read_text())
    (path / META_FILE).write_text(json.dumps({**meta, "layout": "eagle"}))
    with pytest.raises(TapsError, match="do not match the head of layout 'eagle'"):
        load_drafter(path, target)


def test_averaging_refuses_mixed_layouts():
    target = tiny_target("llama")
    with pytest.raises(TapsError, match="another architecture"):
        average_drafters([untrained_drafter(target), untrained_drafter(target, layout="eagle")])
    eagle = [untrained_drafter(target, seed=s, layout="eagle") for s in (1, 2)]
    assert average_drafters(eagle).layout == "eagle"


@pytest.mark.parametrize(("strategy", "options"), STRATEGIES,
                         ids=[f"{s}-{'-'.join(o.values())}" for s, o in STRATEGIES])
def test_every_strategy_is_lossless_and_replays_with_eagle_layout(strategy, options):
    target = tiny_target("llama")
    drafters = [untrained_drafter(target, seed=1, layout="eagle")]
    if strategy != "single":  # one of each layout: strategies never look inside a drafter
        drafters.append(untrained_drafter(target, seed=2))
    prompt = torch.randint(0, 32, (9,), generator=torch.Generator().manual_seed(0)).tolist()
    engine = SpeculativeEngine(target, drafters, TREE, strategy, **options)
    live = engine.generate(prompt, SamplingParams(), 24, stop_token_ids=set())
    plain = generate_plain(target, prompt, SamplingParams(), 24, stop_token_ids=set()).tokens
    assert live.tokens == plain
    item = ReplayPrompt("toy", "p", 0, prompt, plain)
    result = replay(engine.sessions, engine.strategy, item,
                    teacher_features(engine.runner, item), TREE)
    assert result.committed == [s.committed for s in live.steps]


def test_drafter_specs_load_eagle_layout_folders(tmp_path):
    """generate, bench, calibrate and serve all load drafter folders through this spec."""
    target = tiny_target("llama")
    save_drafter(untrained_drafter(target, layout="eagle"), tmp_path / "d", DrafterMeta())
    drafter = load_drafter_spec(str(tmp_path / "d"), target)
    assert isinstance(drafter, EagleDrafter) and drafter.layout == "eagle"


@pytest.mark.parametrize("method", ["eagle2", "hass"])
def test_training_builds_and_saves_the_configured_layout(tmp_path, method):
    from taps_ray.training.trainer import train_drafter
    from taps_ray.training.trainlog import read_log
    from tests.training.conftest import build_cache, fast_config, repeating_examples

    target = tiny_target("llama")
    cache = build_cache(target, repeating_examples(6), tmp_path / "feats")
    result = train_drafter(target, cache, fast_config(max_steps=30), tmp_path / "run",
                           method=method, meta=DrafterMeta(layout="eagle"), progress=False)
    assert result.drafter.layout == "eagle"
    assert json.loads((result.path / META_FILE).read_text())["layout"] == "eagle"
    losses = [r["loss"] for r in read_log(tmp_path / "run" / "train_log.jsonl")
              if r["event"] == "step"]
    assert sum(losses[-5:]) < sum(losses[:5])
