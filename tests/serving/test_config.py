"""Serving configs: strict app args, the best-configuration schema, CLI plans. No model, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from taps_ray.cli import main
from taps_ray.cli.serve_cmd import read_plan
from taps_ray.config.schema import TreeConfig
from taps_ray.errors import TapsError
from taps_ray.serving.config import (
    BestConfig,
    ServeConfig,
    deployment_options,
    load_best_config,
    load_serve_config,
    missing_folders,
    resolve_config,
    save_best_config,
)

REPO = Path(__file__).resolve().parents[2]


def test_unknown_and_mistyped_keys_are_errors():
    with pytest.raises(TapsError, match="unknown config key 'replicas'"):
        load_serve_config({"replicas": 2})
    with pytest.raises(TapsError, match="max_ongoing_requests"):
        load_serve_config({"max_ongoing_requests": "many"})
    with pytest.raises(TapsError, match="default_max_tokens"):
        load_serve_config({"default_max_tokens": 50, "max_tokens_limit": 10})


def test_strategy_is_checked():
    with pytest.raises(TapsError, match="unknown strategy 'fastest'; valid: none, "):
        resolve_config(ServeConfig(strategy="fastest", drafters=["d"]))
    with pytest.raises(TapsError, match="needs drafters"):
        resolve_config(ServeConfig(strategy="single"))
    with pytest.raises(TapsError, match="no option 'budget'"):
        resolve_config(ServeConfig(strategy="single", drafters=["d"],
                                   strategy_options={"budget": "sum"}))


def test_drafter_paths_become_absolute(tmp_path):
    config = resolve_config(ServeConfig(strategy="single", drafters=["a/b"]), cwd=tmp_path)
    assert config.drafters == [str(tmp_path / "a" / "b")]


def test_best_config_round_trip_and_resolution(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "trial" / "drafter").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    best = BestConfig(drafters=["trial/drafter", "elsewhere"], strategy="merged",
                      strategy_options={"budget": "matched"}, tree=TreeConfig(8, 3, 4))
    save_best_config(best, sweep / "best_config.yaml")
    assert load_best_config(sweep / "best_config.yaml") == best
    config = resolve_config(ServeConfig(best_config="sweep/best_config.yaml", num_replicas=2),
                            cwd=tmp_path)
    # next to the YAML first, then the working directory
    assert config.drafters == [str(sweep / "trial" / "drafter"), str(tmp_path / "elsewhere")]
    assert (config.strategy, config.tree, config.num_replicas) == ("merged", best.tree, 2)


def test_bad_best_config_names_the_file(tmp_path):
    path = tmp_path / "best_config.yaml"
    path.write_text("strategy: merged\ntrees: {}\n")
    with pytest.raises(TapsError, match="best_config.yaml.*unknown config key 'trees'"):
        load_best_config(path)


def test_deployment_options():
    fixed = deployment_options(ServeConfig(num_replicas=2, max_queued_requests=5))
    assert fixed["num_replicas"] == 2 and fixed["max_queued_requests"] == 5
    assert fixed["ray_actor_options"] == {"num_cpus": 1.0}
    assert fixed["backpressure_config"] == {"status_code": 503, "retry_after_s": 2.0}
    scaled = deployment_options(ServeConfig(autoscaling={"min_replicas": 1, "max_replicas": 3}))
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 3


def test_batching_keys_and_the_replica_capacity_they_imply():
    batched = ServeConfig()
    assert batched.batched and batched.max_batch_size == 16
    assert deployment_options(batched)["max_ongoing_requests"] == 16 + batched.batch_queue
    assert batched.decode_threads == 16 + batched.batch_queue  # one reader per held request
    small = ServeConfig(max_batch_size=2, batch_queue=1, max_ongoing_requests=8)
    assert deployment_options(small)["max_ongoing_requests"] == 8
    off = ServeConfig(batching="off", engines_per_replica=2)
    assert deployment_options(off)["max_ongoing_requests"] == 4 and off.decode_threads == 2
    assert ServeConfig(batching="off", max_ongoing_requests=1).ongoing_limit == 1
    # YAML 1.1 reads an unquoted `off` as false: that still means batching off
    assert load_serve_config(yaml.safe_load("batching: off")).batching == "off"
    with pytest.raises(TapsError, match=r"max_ongoing_requests \(4\) is below max_batch_size "
                       r"\(16\).*raise it, lower max_batch_size"):
        load_serve_config({"max_ongoing_requests": 4})
    for bad in ({"max_batch_size": 0}, {"batch_queue": -1}, {"prefill_chunk": 0},
                {"batching": "dynamic"}):
        with pytest.raises(TapsError, match=next(iter(bad))):
            load_serve_config(bad)


def test_default_app_config_resolves():
    http, apps = read_plan(REPO / "serve_apps" / "default.yaml", [])
    assert http == {"host": "127.0.0.1", "port": 8000}
    config = resolve_config(load_serve_config(apps[0]["args"]), cwd=REPO)
    assert config.strategy == "route-confidence" and config.missing_drafters == "plain"
    assert config.served_name == "smollm2-135m-instruct"
    assert config.drafters[0].endswith("runs/quickstart/drafters/math-eagle2")
    assert (config.batching, config.num_replicas, config.torch_threads) == ("continuous", 1, 2)
    _, apps = read_plan(REPO / "serve_apps" / "one_at_a_time.yaml", [])
    earlier = resolve_config(load_serve_config(apps[0]["args"]), cwd=REPO)
    assert (earlier.batching, earlier.num_replicas, earlier.ongoing_limit) == ("off", 2, 4)


def test_every_shipped_serve_app_is_valid():
    for path in sorted((REPO / "serve_apps").glob("*.yaml")):
        _, apps = read_plan(path, [])
        for app in apps:
            resolve_config(load_serve_config(app["args"]), cwd=REPO)


def test_plan_kinds(tmp_path):
    best = tmp_path / "best_config.yaml"
    best.write_text(yaml.safe_dump({"strategy": "single", "drafters": ["d"]}))
    http, apps = read_plan(best, ["num_replicas=2"])
    assert http["host"] == "127.0.0.1"  # loopback unless the config says otherwise
    assert apps[0]["args"] == {"best_config": str(best), "num_replicas": 2}
    serve_file = tmp_path / "serve.yaml"
    serve_file.write_text(yaml.safe_dump({"applications": [
        {"import_path": "taps_ray.serving.app:build_app", "runtime_env": {}}]}))
    with pytest.raises(TapsError, match="runtime_env is not read by taps-ray serve"):
        read_plan(serve_file, [])


def test_cli_check(tmp_path, capsys):
    best = tmp_path / "best_config.yaml"
    best.write_text(yaml.safe_dump({"strategy": "single", "drafters": ["missing"]}))
    assert main(["serve", str(best), "--check"]) == 0
    out = capsys.readouterr().out
    assert "strategy: single" in out and "missing drafter folder" in out
    assert main(["serve", str(best), "oops=1", "--check"]) == 2


def test_policy_defaults_to_adaptive_and_the_app_setting_wins(tmp_path):
    assert resolve_config(ServeConfig()).policy == "adaptive"
    save_best_config(BestConfig(drafters=["prompt-lookup"], policy="fixed"), tmp_path / "b.yaml")
    best = resolve_config(ServeConfig(best_config="b.yaml"), cwd=tmp_path)
    assert best.policy == "fixed"  # the best configuration's
    mine = resolve_config(ServeConfig(best_config="b.yaml", policy="adaptive"), cwd=tmp_path)
    assert mine.policy == "adaptive"  # the app's own setting wins
    with pytest.raises(TapsError, match="policy"):
        load_serve_config({"policy": "fastest"})


def test_prompt_lookup_drafters_stay_specs(tmp_path):
    config = resolve_config(ServeConfig(strategy="merged", drafters=[
        "prompt-lookup:num_tokens=4", "a/b"], profile="p.json"), cwd=tmp_path)
    assert config.drafters == ["prompt-lookup:num_tokens=4", str(tmp_path / "a" / "b")]
    assert config.profile == str(tmp_path / "p.json")
    assert missing_folders(config.drafters) == [str(tmp_path / "a" / "b")]


def test_best_config_that_chose_plain_decoding(tmp_path):
    best = tmp_path / "best_config.yaml"
    best.write_text(yaml.safe_dump({"strategy": "plain", "drafters": ["math-hass"],
                                    "reason": "nothing beat plain decoding by 5 %",
                                    "metric": "tokens_per_s", "value": 17.0}))
    http, apps = read_plan(best, [])  # informational keys still mark a best configuration
    assert apps[0]["args"] == {"best_config": str(best)}
    config = resolve_config(load_serve_config(apps[0]["args"]))
    assert (config.strategy, config.drafters) == ("none", [])


def test_cli_check_policy_and_profile(tmp_path, capsys):
    best = tmp_path / "best_config.yaml"
    best.write_text(yaml.safe_dump({"strategy": "single", "drafters": ["prompt-lookup"]}))
    assert main(["serve", str(best), "--policy", "fixed", "--check"]) == 0
    out = capsys.readouterr().out
    assert "policy: fixed" in out and "missing drafter folder" not in out
    corrupt = tmp_path / "profile.json"
    corrupt.write_text("{not json")
    assert main(["serve", str(best), "--profile", str(corrupt), "--check"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "profile.json' is corrupt" in err[0]
