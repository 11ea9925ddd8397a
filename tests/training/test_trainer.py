"""Training loop: losses fall, resume is exact, damage is reported, outputs are complete."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from taps_ray.config.schema import DataConfig
from taps_ray.errors import TapsError
from taps_ray.training.pipeline import default_drafter_name
from taps_ray.training.trainer import train_drafter
from taps_ray.training.trainlog import read_log
from taps_ray.training.vocab import build_draft_vocab
from tests.training.conftest import build_cache, fast_config


def step_rows(out_dir) -> list[dict]:
    return [r for r in read_log(out_dir / "train_log.jsonl") if r["event"] == "step"]


def mean(values) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize("method", ["eagle2", "hass"])
def test_loss_decreases_on_a_repeating_dataset(target, examples, tmp_path, method):
    cache = build_cache(target, examples, tmp_path / "feats")
    result = train_drafter(target, cache, fast_config(max_steps=50), tmp_path / "run",
                           method=method, progress=False)
    rows = step_rows(tmp_path / "run")
    assert len(rows) == 50 == result.state.step
    first, last = mean([r["loss"] for r in rows[:5]]), mean([r["loss"] for r in rows[-5:]])
    assert last < 0.5 * first
    assert mean([r["acc"] for r in rows[-5:]]) > mean([r["acc"] for r in rows[:5]])
    if method == "hass":
        assert rows[-1]["topk"] > 0 and "acc_aligned" in rows[-1]
    for key in ("step", "epoch", "loss", "feature", "ce", "lr", "tokens_per_s"):
        assert key in rows[-1]
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path / "feats")
    cfg = fast_config(max_steps=12)  # 3 batches per epoch: stop mid-epoch 1
    straight = train_drafter(target, cache, cfg, tmp_path / "a", method="hass", progress=False)
    stopped = train_drafter(target, cache, cfg, tmp_path / "b", method="hass", stop_after=5,
                            progress=False)
    assert stopped.path is None and stopped.state.step == 5
    resumed = train_drafter(target, cache, cfg, tmp_path / "b", method="hass", resume=True,
                            progress=False)
    assert resumed.state.step == 12
    for name, value in straight.drafter.state_dict().items():
        assert torch.equal(value, resumed.drafter.state_dict()[name]), name
    losses = [r["loss"] for r in step_rows(tmp_path / "b")]
    assert losses == [r["loss"] for r in step_rows(tmp_path / "a")]


@pytest.mark.parametrize("damaged", ["trainer_state.pt", "model.safetensors"])
def test_truncated_checkpoint_on_resume_is_a_user_error(target, examples, tmp_path, damaged):
    cache = build_cache(target, examples, tmp_path / "feats")
    cfg = fast_config(max_steps=6)
    train_drafter(target, cache, cfg, tmp_path / "b", stop_after=2, progress=False)
    path = tmp_path / "b" / "checkpoints" / "last" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TapsError, match="truncated or corrupted"):
        train_drafter(target, cache, cfg, tmp_path / "b", resume=True, progress=False)


def test_resume_in_another_layout_is_a_user_error_not_a_damaged_file(target, examples,
                                                                     tmp_path):
    from taps_ray.models.drafter import DrafterMeta

    cache = build_cache(target, examples, tmp_path / "feats")
    cfg = fast_config(max_steps=6)
    train_drafter(target, cache, cfg, tmp_path / "b", stop_after=2, progress=False,
                  meta=DrafterMeta(layout="taps"))
    with pytest.raises(TapsError, match="layout='taps' but this run has 'eagle'"):
        train_drafter(target, cache, cfg, tmp_path / "b", resume=True, progress=False,
                      meta=DrafterMeta(layout="eagle"))


def test_resume_with_other_settings_is_a_user_error(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path / "feats")
    train_drafter(target, cache, fast_config(max_steps=6), tmp_path / "b", stop_after=2,
                  progress=False)
    with pytest.raises(TapsError, match="training="):
        train_drafter(target, cache, fast_config(max_steps=6, lr=1e-3), tmp_path / "b",
                      resume=True, progress=False)


def test_reduced_vocab_training_and_saved_drafter(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path / "feats")
    vocab = build_draft_vocab(cache.token_arrays(), size=10, vocab_size=32, special_ids=[0])
    assert set(range(1, 9)) <= set(vocab.tolist())  # the 8 ids of the repeating pattern
    result = train_drafter(target, cache, fast_config(max_steps=30), tmp_path / "run",
                           method="hass", draft_vocab=vocab, progress=False)
    rows = step_rows(tmp_path / "run")
    assert mean([r["loss"] for r in rows[-5:]]) < mean([r["loss"] for r in rows[:5]])
    saved = load_file(str(result.path / "model.safetensors"))
    assert saved["draft_vocab"].tolist() == vocab.tolist()
    assert "lm_head.weight" not in saved and not any("embed" in k and "decoder" not in k
                                                     for k in saved)
    meta = json.loads((result.path / "taps.json").read_text())
    assert meta["method"] == "hass" and meta["draft_vocab_size"] == 10
    assert meta["extra"]["training"]["steps"] == 30


def test_epoch_hook_gets_an_eval_copy_and_its_metrics_are_logged(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path / "feats")
    seen = []

    def hook(epoch, drafter):
        seen.append((epoch, drafter.training, next(drafter.parameters()).requires_grad))
        return {"tau": 1.0 + epoch}

    result = train_drafter(target, cache, fast_config(epochs=2, max_steps=0), tmp_path / "run",
                           on_epoch_end=hook, progress=False)
    assert seen == [(0, False, False), (1, False, False)]
    epochs = [r for r in read_log(tmp_path / "run" / "train_log.jsonl") if r["event"] == "epoch"]
    assert [r["tau"] for r in epochs] == [1.0, 2.0]
    assert result.state.step == 6 and result.summary["epoch_metrics"][1]["tau"] == 2.0


def test_unknown_method_is_a_user_error(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path / "feats")
    with pytest.raises(TapsError, match="drafter.method"):
        train_drafter(target, cache, fast_config(), tmp_path / "run", method="medusa")


def test_default_drafter_names():
    assert default_drafter_name(DataConfig(mixture="math=1.0"), "eagle2") == "math-eagle2"
    assert default_drafter_name(DataConfig(mixture="chat=1.0"), "hass") == "chat-hass"
    mixed = DataConfig(mixture="math=0.5,chat=0.5", total=70000)
    assert default_drafter_name(mixed, "hass") == "mix35k-hass"


def val_rows(out_dir) -> list[dict]:
    return [r for r in read_log(out_dir / "train_log.jsonl") if r["event"] == "epoch"]


def test_patience_stops_when_the_validation_loss_stops_falling(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path / "feats")
    # lr ~0: the validation loss never moves, so epoch 0 stays best and 2 epochs without gain
    # end the run at epoch 3 of 10
    cfg = fast_config(max_steps=0, epochs=10, lr=1e-12, holdout=0.25, patience=2)
    result = train_drafter(target, cache, cfg, tmp_path / "run", progress=False)
    epochs = val_rows(tmp_path / "run")
    assert len(epochs) == 3 and all("val_loss" in r and "val_acc" in r for r in epochs)
    summary = result.summary["validation"]
    assert summary["best_epoch"] == 0 and summary["stopped_early"] is True
    assert summary["conversations"] == round(0.25 * len(examples))
    assert result.state.epoch == 3 and result.summary["epochs_done"] == 3
    saved = json.loads((tmp_path / "run" / "drafter" / "taps.json").read_text())
    assert saved["extra"]["training"]["validation"]["best_epoch"] == 0


def weights(folder) -> dict:
    return load_file(str(folder / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_saved_drafter_is_the_best_validation_epoch(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path / "feats")
    # lr 0.3 on this data: the validation loss falls, then rises at epoch 2, which stops it
    cfg = fast_config(max_steps=0, epochs=4, lr=0.3, holdout=0.25, patience=1)
    result = train_drafter(target, cache, cfg, tmp_path / "run", progress=False)
    losses = [r["val_loss"] for r in val_rows(tmp_path / "run")]
    best = min(range(len(losses)), key=lambda e: (losses[e], e))
    assert losses[best] < losses[0] and best < len(losses) - 1, losses
    assert result.summary["validation"]["best_epoch"] == best
    assert result.summary["validation"]["stopped_early"] is True
    run = tmp_path / "run"
    final = weights(run / "drafter")
    assert same(final, weights(run / "checkpoints" / "best"))
    assert not same(final, weights(run / "checkpoints" / "last"))  # not the last epoch's


def test_early_stopping_resumes_exactly(target, examples, tmp_path):
    cache = build_cache(target, examples, tmp_path / "feats")
    cfg = fast_config(max_steps=0, epochs=3, holdout=0.25, patience=1)
    straight = train_drafter(target, cache, cfg, tmp_path / "a", progress=False)
    train_drafter(target, cache, cfg, tmp_path / "b", stop_after=4, progress=False)
    resumed = train_drafter(target, cache, cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.summary["validation"] == straight.summary["validation"]
    for name, value in straight.drafter.state_dict().items():
        assert torch.equal(value, resumed.drafter.state_dict()[name]), name


@pytest.mark.parametrize("overrides, message", [
    ({"patience": 2}, "training.patience 2 needs a validation loss"),
    ({"holdout": 0.6}, "training.holdout must be in"),
    ({"patience": -1, "holdout": 0.1}, "training.patience -1"),
])
def test_bad_validation_settings_are_one_sentence(target, examples, tmp_path, overrides,
                                                  message):
    cache = build_cache(target, examples, tmp_path / "feats")
    with pytest.raises(TapsError, match=message):
        train_drafter(target, cache, fast_config(**overrides), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def first_losses(out_dir, n: int = 3) -> float:
    return mean([r["loss"] for r in step_rows(out_dir)[:n]])


@pytest.mark.parametrize("method", ["hass", "eagle3"])
def test_init_from_continues_a_saved_head_with_a_fresh_schedule(target, examples, tmp_path,
                                                                 method):
    from taps_ray.models.eagle3 import default_aux_layers
    from taps_ray.training.trainer import DrafterTrainer

    aux = default_aux_layers(target.model.config.num_hidden_layers) if method == "eagle3" else ()
    cache = build_cache(target, examples, tmp_path / "feats", aux_layers=aux)
    vocab = build_draft_vocab(cache.token_arrays(), size=12, vocab_size=32, special_ids=[0])
    first = train_drafter(target, cache, fast_config(max_steps=40), tmp_path / "first",
                          method=method, draft_vocab=vocab, progress=False)
    cfg = fast_config(max_steps=6, init_from=str(first.path))
    # the caller's vocabulary is ignored: the saved head's LM-head rows belong to its own
    trainer = DrafterTrainer(target, cache, cfg, method, tmp_path / "next", None, None)
    assert trainer.drafter.draft_vocab.tolist() == vocab.tolist()
    for name, value in first.drafter.state_dict().items():
        assert torch.equal(value.to(trainer.drafter.state_dict()[name].dtype),
                           trainer.drafter.state_dict()[name]), name
    fresh = train_drafter(target, cache, fast_config(max_steps=6), tmp_path / "fresh",
                          method=method, draft_vocab=vocab, progress=False)
    warm = train_drafter(target, cache, cfg, tmp_path / "warm", method=method, progress=False)
    ended = mean([r["loss"] for r in step_rows(tmp_path / "first")[-5:]])
    assert first_losses(tmp_path / "warm") < 1.25 * ended < first_losses(tmp_path / "fresh")
    lrs = [[r["lr"] for r in step_rows(tmp_path / run)] for run in ("warm", "fresh")]
    assert lrs[0] == lrs[1]  # a fresh warmup and cosine, not the saved run's tail
    assert warm.summary["config"]["init_from"] == str(first.path)  # traceable in taps.json
    assert fresh.drafter.draft_vocab_size == warm.drafter.draft_vocab_size == 12


def test_init_from_another_method_or_layout_is_one_sentence(target, examples, tmp_path):
    from taps_ray.models.drafter import DrafterMeta

    cache = build_cache(target, examples, tmp_path / "feats")
    saved = train_drafter(target, cache, fast_config(max_steps=2), tmp_path / "saved",
                          method="eagle2", progress=False).path
    cfg = fast_config(max_steps=2, init_from=str(saved))
    with pytest.raises(TapsError, match=r"init_from .* is a eagle2 head; train drafter.method"):
        train_drafter(target, cache, cfg, tmp_path / "a", method="hass", progress=False)
    with pytest.raises(TapsError, match=r"init_from .* does not fit this run's head"):
        train_drafter(target, cache, cfg, tmp_path / "b", method="eagle2", progress=False,
                      meta=DrafterMeta(layout="eagle"))
    missing = fast_config(max_steps=2, init_from=str(tmp_path / "nowhere"))
    with pytest.raises(TapsError, match="nowhere.* is not a saved drafter"):
        train_drafter(target, cache, missing, tmp_path / "c", method="eagle2", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
