"""Fitting drafters' confidence calibrations on held-out replay, storing them in taps.json, and
`taps-ray drafter calibrate`'s input checks."""

from __future__ import annotations

import json

import pytest
import torch

from taps_ray.cli import main
from taps_ray.config.schema import TreeConfig
from taps_ray.decoding import calibration as cal
from taps_ray.decoding.engine import generate_plain
from taps_ray.decoding.proposer import make_session
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.decoding.tree import DraftTree
from taps_ray.errors import TapsError
from taps_ray.evaluation import confidence
from taps_ray.evaluation.replay import KnownTrees, ReplayPrompt, match_length, teacher_features
from taps_ray.models.drafter import (
    META_FILE,
    WEIGHTS_FILE,
    DrafterMeta,
    load_drafter,
    read_meta,
    save_drafter,
    untrained_drafter,
)
from tests.tiny import tiny_target

TREE = TreeConfig(12, 3, 4)


def items(target, n: int = 4) -> list[ReplayPrompt]:
    out = []
    for k in range(n):
        prompt = torch.randint(0, 32, (6 + k,), generator=torch.Generator().manual_seed(k))
        cont = generate_plain(target, prompt.tolist(), SamplingParams(), 20,
                              stop_token_ids=set()).tokens
        source = ("mathinstruct", "sharegpt")[k % 2]
        out.append(ReplayPrompt(source, f"{source}/{k}", 0, prompt.tolist(), cont))
    return out


def saved(tmp_path, target, name="math-hass", seed=1):
    folder = tmp_path / name
    save_drafter(untrained_drafter(target, seed=seed), folder,
                 DrafterMeta(name=name, method="hass", target=target.name))
    return folder


def test_accepted_path_is_the_matched_root_path():
    tree = DraftTree.make_dummy([-1, -1, 0, 0, 2], tokens=[5, 6, 7, 8, 9])
    assert confidence.accepted_path(tree, [5, 7, 9, 1]) == [0, 2, 4]
    assert confidence.accepted_path(tree, [6, 7]) == [1]
    assert confidence.accepted_path(tree, [4]) == []
    for upcoming in ([5, 7, 9, 1], [5, 8], [3]):
        assert len(confidence.accepted_path(tree, upcoming)) == match_length(tree, upcoming)


def test_node_pairs_label_every_node_of_every_tree_by_the_matched_path():
    target = tiny_target("llama")
    drafter = untrained_drafter(target, seed=1)
    runner = TargetRunner(target.model)
    item = items(target, 1)[0]
    feats = teacher_features(runner, item)
    session = make_session(drafter, runner.embed, runner.lm_head.weight)
    pairs = confidence.node_pairs(session, item, feats, TREE)
    # the same trees, position by position
    seq = torch.tensor(item.prompt_ids + item.continuation)
    known = KnownTrees(session, feats, seq)
    start, sizes, matched = len(item.prompt_ids), 0, 0
    for done in range(1, len(item.continuation) - TREE.depth):
        known.length = start + done - 1
        tree = known.draft(TREE)
        sizes += tree.size
        matched += match_length(tree, item.continuation[done:])
    assert pairs.scores.numel() == pairs.accepted.numel() == sizes
    assert int(pairs.accepted.sum()) == matched
    assert bool((pairs.scores <= 0).all())
    # one context per tree: the head's hidden state at the root, as a live session holds it
    trees = len(item.continuation) - TREE.depth - 1
    assert pairs.contexts.shape == (trees, target.model.config.hidden_size)
    assert pairs.tree_of.tolist() == sorted(pairs.tree_of.tolist())
    assert int(pairs.tree_of.max()) == trees - 1
    live = make_session(drafter, runner.embed, runner.lm_head.weight)
    live.reset(item.prompt_ids[0])
    live.extend(feats[: start + 2], seq[1 : start + 3])  # committed: prompt + 2 tokens
    live.draft(TREE)
    torch.testing.assert_close(pairs.contexts[2].float(), live.last_hidden.float(),
                               atol=1e-4, rtol=1e-4)


def test_fit_is_scored_on_the_other_half_and_stored_with_its_data(tmp_path):
    target = tiny_target("llama")
    folder = saved(tmp_path, target)
    drafter = load_drafter(folder, target)
    pairs = confidence.collect(target, drafter, items(target), TREE)
    fit_part, held = confidence.split(pairs)
    assert [p.source for p in fit_part] == ["mathinstruct", "sharegpt"]
    assert [p.source for p in held] == ["mathinstruct", "sharegpt"]
    fitted = confidence.fit_calibration(pairs, "auto")
    fits = ("temperature", "isotonic", "context")
    held_out = fitted.fitted_on["heldout"]
    assert set(held_out) == {"identity", *fits}
    # auto keeps the raw confidences unless a fit beats them on the held-out half
    assert held_out[fitted.method]["log_loss"] == min(held_out[m]["log_loss"]
                                                      for m in ("identity", *fits))
    context = confidence.fit_calibration(pairs, "context")
    assert context.fitted_on["l2"] in confidence.CONTEXT_L2
    assert len(context.trust_weights) == target.model.config.hidden_size
    weights = (folder / WEIGHTS_FILE).read_bytes()
    confidence.write_calibration(folder, fitted)
    assert (folder / WEIGHTS_FILE).read_bytes() == weights  # only taps.json is rewritten
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "taps.json"]
    again = load_drafter(folder, target)
    assert cal.calibration_of(again.meta) == fitted
    assert again.meta.extra[cal.META_KEY]["fitted_on"]["pairs"] == fitted.fitted_on["pairs"]
    assert confidence.fit_calibration(pairs, "temperature").method == "temperature"
    bare = [confidence.Pairs(p.source, p.scores, p.accepted) for p in pairs]
    assert confidence.fit_calibration(bare, "auto").method in ("temperature", "isotonic")
    with pytest.raises(TapsError, match="hidden states"):
        confidence.fit_calibration(bare, "context")
    with pytest.raises(TapsError, match="--method"):
        confidence.fit_calibration(pairs, "platt")
    with pytest.raises(TapsError, match="too few"):
        confidence.fit_calibration(pairs[:1], "auto")


def test_old_drafters_load_uncalibrated_and_damaged_calibrations_are_refused(tmp_path):
    target = tiny_target("llama")
    folder = saved(tmp_path, target)
    meta = json.loads((folder / META_FILE).read_text())
    assert "confidence_calibration" not in meta["extra"]
    assert cal.calibration_of(load_drafter(folder, target).meta) is cal.IDENTITY
    assert confidence.training_ids(read_meta(folder)) is None  # no mixture recorded
    meta["extra"][cal.META_KEY] = {"method": "isotonic", "x": [0.0, -1.0], "y": [0.1, 0.2]}
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(TapsError, match="damaged confidence calibration"):
        load_drafter(folder, target)


def test_a_context_calibration_of_another_width_is_refused_at_load(tmp_path):
    target = tiny_target("llama")
    folder = saved(tmp_path, target)
    d = target.model.config.hidden_size
    for width in (d, d + 1):
        fitted = cal.Calibration("context", trust_weights=(0.1,) * width, trust_default=0.5)
        confidence.write_calibration(folder, fitted)
        if width == d:
            assert cal.calibration_of(load_drafter(folder, target).meta) == fitted
    with pytest.raises(TapsError, match=f"{d + 1} weights for a {d}-unit head"):
        load_drafter(folder, target)


@pytest.mark.parametrize("args, message", [
    (["--prompts", "2"], "--prompts must be >= 4"),
    (["--method", "platt"], "--method 'platt' is unknown"),
    (["--max-new-tokens", "3"], "--max-new-tokens must be >= 8"),
])
def test_calibrate_cli_rejects_bad_flags_in_one_sentence(tmp_path, capsys, args, message):
    folder = saved(tmp_path, tiny_target("llama"))
    assert main(["drafter", "calibrate", str(folder), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


def test_calibrate_cli_rejects_missing_folders_and_mixed_targets(tmp_path, capsys):
    assert main(["drafter", "calibrate", str(tmp_path / "nowhere")]) == 2
    assert "has no config.json" in capsys.readouterr().err
    a = saved(tmp_path, tiny_target("llama"), "math-hass")
    b = saved(tmp_path, tiny_target("llama"), "chat-hass", seed=2)
    meta = json.loads((b / META_FILE).read_text())
    (b / META_FILE).write_text(json.dumps({**meta, "target": "another-model"}))
    assert main(["drafter", "calibrate", str(a), str(b)]) == 2
    assert "one target" in capsys.readouterr().err


def test_auto_keeps_raw_confidences_that_no_fit_improves_held_out():
    """Nodes accepted with probability exactly exp(s): the raw confidences are calibrated, so
    on held-out prompts no fit is better, and auto stores identity."""
    gen = torch.Generator().manual_seed(0)

    def calibrated_pairs(source: str) -> confidence.Pairs:
        s = -torch.rand(400, generator=gen, dtype=torch.float64) * 3
        accepted = (torch.rand(400, generator=gen, dtype=torch.float64) < s.exp()).double()
        return confidence.Pairs(source, s, accepted)

    pairs = [calibrated_pairs(src) for src in ("mathinstruct", "sharegpt") * 2]
    held = confidence.split(pairs)[1]
    fitted = confidence.fit_calibration(pairs, "auto")
    losses = fitted.fitted_on["heldout"]
    assert fitted.method == min(losses, key=lambda m: losses[m]["log_loss"])
    assert fitted == cal.IDENTITY  # (0.44746 held out vs temperature 0.44762, isotonic 0.4646)
    forced = confidence.fit_calibration(pairs, "temperature")
    assert forced.method == "temperature"  # a named method is fitted whatever it scores
    assert confidence.scores_of(fitted, held)["log_loss"] < confidence.scores_of(forced,
                                                                                 held)["log_loss"]
