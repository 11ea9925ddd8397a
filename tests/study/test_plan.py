"""`taps-ray plan`: every committed config plans; estimates follow the config; bad input errs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taps_ray.cli import main
from taps_ray.study.plan import make_plan, model_shape

ROOT = Path(__file__).parents[2]
STUDIES = sorted((ROOT / "experiments" / "paper").glob("study_*.yaml"))


def test_four_paper_studies_exist():
    names = {p.stem for p in STUDIES}
    assert names == {"study_llama3_8b", "study_qwen3_1p7b", "study_qwen3_4b", "study_vicuna_13b"}


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_paper_study_plans_every_variant_and_method(path):
    plan = make_plan(str(path))
    assert plan.kind == "study" and plan.shape is not None
    names = [t["name"] for t in plan.trainings]
    assert names == [f"{v}-{m}" for v in ("math", "sharegpt", "mix35k", "mix70k")
                     for m in ("eagle2", "hass")]
    assert all(t["epochs"] == 20 for t in plan.trainings)
    # a cache is built once per data spec: the hass run of a variant reuses eagle2's features
    assert [t["feature_gib"] > 0 for t in plan.trainings] == [True, False] * 4
    hass = {t["name"]: t["gpu_h_train"] for t in plan.trainings}
    assert hass["math-hass"] == pytest.approx(4 * hass["math-eagle2"])  # J = 3 alignment passes
    mix35, mix70 = (next(t for t in plan.trainings if t["name"] == f"{m}-eagle2")
                    for m in ("mix35k", "mix70k"))
    assert mix70["tokens"] == pytest.approx(2 * mix35["tokens"])
    assert plan.totals["gpu_h"] > 10  # full 8B-class study: tens of GPU-hours


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_committed_config_plans(path):
    plan = make_plan(str(path))
    assert plan.trainings or plan.evaluations


def test_local_target_shape_comes_from_its_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 1000,
        "tie_word_embeddings": True}))
    shape = model_shape(str(tmp_path))
    assert shape.hidden == 64 and shape.params == 2 * (4 * 64 * 64 + 3 * 64 * 128) + 1000 * 64


def test_unknown_target_is_planned_without_estimates(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("target: {name: some-org/unknown-model}\ndata: {total: 10}\n")
    assert main(["plan", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "size unknown" in out and "not estimated" in out and "n/a" in out


def test_plan_json_and_overrides(capsys):
    path = str(ROOT / "experiments" / "paper" / "study_llama3_8b.yaml")
    assert main(["plan", path, "methods=[eagle2]", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [t["method"] for t in plan["trainings"]] == ["eagle2"] * 4
    assert plan["totals"]["gpu_h"] > 0


STUDY_WITH_PUBLISHED = """\
variants: {math: {mixture: "math=1.0", total: 50}}
methods: [hass]
specialists: [math]
live_prompts_per_benchmark: 2
published_drafters:
  mathpub-hass: {path: checkpoints/not-downloaded-yet, method: hass}
  sharegpteagle-eagle2: {path: checkpoints/eagle-llama3, method: eagle2}
"""


def test_published_drafters_are_rows_with_their_import_commands(tmp_path, capsys):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(STUDY_WITH_PUBLISHED)
    plan = make_plan(str(cfg))  # checkpoints need not exist: plan runs nothing
    assert [t["name"] for t in plan.trainings] == ["math-hass"]  # published ones train nothing
    replay = [e["what"] for e in plan.evaluations if e["what"].startswith("replay")]
    assert replay[1:] == [f"replay, set {n}: 1 rows x 4 benchmarks x T=0"
                          for n in ("mathpub-hass", "sharegpteagle-eagle2")]
    live = [e["what"] for e in plan.evaluations if "set mathpub-hass" in e["what"]]
    assert live[-1].startswith("live, set mathpub-hass: 1 rows")  # no second plain row
    assert main(["plan", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert ("taps-ray drafter import checkpoints/eagle-llama3 --target smollm2-135m-instruct "
            "--out runs/paper/study/published/sharegpteagle-eagle2 --name sharegpteagle-eagle2 "
            "--method eagle2") in out


def test_paper_llama3_study_lists_the_published_hass_heads():
    plan = make_plan(str(ROOT / "experiments" / "paper" / "study_llama3_8b.yaml"))
    rows = " ".join(e["what"] for e in plan.evaluations)
    assert all(f"set {n}:" in rows for n in ("mathpub-hass", "sharegptpub-hass", "avgpub-hass"))


@pytest.mark.parametrize(("text", "needle"), [
    ("variants: {}\n", "variants is empty"),
    ("variants: {math: {total: 5}}\nspecialists: [chat]\n", "specialists names 'chat'"),
    ("variants: {math: {total: 5}}\nmethods: [medusa]\n", "methods has 'medusa'"),
    ("variants: {math: {totl: 5}}\n", "unknown config key 'variants.math.totl'"),
    ("drafter_sets: {a: [x]}\nbenchmarks: [hellaswag]\n", "unknown benchmark 'hellaswag'"),
    ("variants: {math: {total: 5}}\npublished_drafters: {math-pub-hass: {path: p}}\n",
     "name 'math-pub-hass' must be <data>-<method>"),
    ("variants: {math: {total: 5}}\npublished_drafters: {mathpub-eagle2: {path: p}}\n",
     "name 'mathpub-eagle2' must be <data>-<method>"),
    ("variants: {math: {total: 5}}\npublished_drafters: {math-hass: {path: p}}\n",
     "is also a trained drafter's name"),
    ("variants: {math: {total: 5}}\npublished_drafters: {mathpub-hass: {path: p, "
     "method: medusa}}\n", "method 'medusa' is unknown"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, text, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert main(["plan", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
