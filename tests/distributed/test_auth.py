"""Ray token authentication with the real components: a head started by `ray start --head` with
RAY_AUTH_MODE=token (dashboard on 127.0.0.1, its own temp dir, stopped by its pid), the Jobs
API over plain HTTP, and the taps-ray CLI / drivers in subprocesses (Ray caches its auth mode
and token per process, so each client state gets a fresh process with its own empty HOME).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from taps_ray.data.paths import data_root
from taps_ray.distributed.runtime import token_source
from taps_ray.errors import TapsError

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
pytestmark = pytest.mark.timeout(300)


@dataclass
class TokenCluster:
    address: str  # GCS host:port
    dashboard: str  # http://127.0.0.1:port (Jobs API)
    token: str
    cache: Path  # TAPS_CACHE_DIR of the head and the drivers
    root: Path  # scratch space (client HOMEs, results)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_for_ports(proc: subprocess.Popen, ports: list[int], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.3)


@pytest.fixture(scope="module")
def token_cluster():
    from taps_ray.models.target import cache_dir

    # short root: Ray's unix socket paths under the temp dir are length-limited
    root = Path(tempfile.mkdtemp(prefix="rtok", dir="/tmp"))
    cache = root / "cache"
    cache.mkdir()
    if (cache_dir() / "models").is_dir():  # the converted default target, never rebuilt
        (cache / "models").symlink_to(cache_dir() / "models")
    token = secrets.token_hex(16)
    gcs, dash, client, agent = _free_ports(4)
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, TAPS_CACHE_DIR=str(cache),
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))  # workers import tests.distributed
    cmd = [str(RAY), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--temp-dir={root / 'ray'}", "--disable-usage-stats"]
    log = root / "head.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)
    try:
        _wait_for_ports(proc, [gcs, dash], log, timeout=120)
        yield TokenCluster(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", token, cache, root)
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its own node processes
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def client_env(cluster: TokenCluster, **auth: str) -> dict[str, str]:
    """A driver's environment: no token anywhere (empty HOME) unless `auth` sets one."""
    home = Path(tempfile.mkdtemp(prefix="home", dir=cluster.root))
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env.update(HOME=str(home), TAPS_CACHE_DIR=str(cluster.cache), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO), **auth)
    if data_root() is not None:
        env["TAPS_DATA_DIR"] = str(data_root())
    return env


def taps_ray(args: list[str], env: dict[str, str], timeout: float = 240):
    return subprocess.run([sys.executable, "-m", "taps_ray", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def jobs_api(cluster: TokenCluster, path: str, token: str | None, body: dict | None = None):
    """(status, json) of one Jobs API request, with `Authorization: Bearer token` if given."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(cluster.dashboard + path, data=data, headers=headers,
                                 method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None


def test_jobs_api_refuses_without_the_token_and_runs_with_it(token_cluster):
    job = {"entrypoint": "python -c \"print('job-ran')\""}
    assert jobs_api(token_cluster, "/api/jobs/", None, job)[0] == 401
    assert jobs_api(token_cluster, "/api/jobs/", "not-the-token", job)[0] == 403
    assert jobs_api(token_cluster, "/api/jobs/", None)[0] == 401  # listing jobs too
    status, reply = jobs_api(token_cluster, "/api/jobs/", token_cluster.token, job)
    assert status == 200
    job_id, deadline = reply["submission_id"], time.monotonic() + 120
    while (info := jobs_api(token_cluster, f"/api/jobs/{job_id}", token_cluster.token)[1])[
            "status"] not in ("SUCCEEDED", "FAILED", "STOPPED") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert info["status"] == "SUCCEEDED"
    logs = jobs_api(token_cluster, f"/api/jobs/{job_id}/logs", token_cluster.token)[1]
    assert "job-ran" in logs["logs"]


@pytest.mark.parametrize("command", [
    ["sweep", "experiments/sweep_mixture.yaml"],
    ["bench", "experiments/bench_smoke.yaml", "--ray"],
    ["serve", "serve_apps/default.yaml"],
])
def test_drivers_without_the_token_get_one_sentence(token_cluster, command, tmp_path):
    extra = ["--storage-path", str(tmp_path)] if command[0] == "sweep" else []
    out = taps_ray([*command, *extra, "--address", token_cluster.address],
                   client_env(token_cluster))
    assert out.returncode == 2, out.stderr[-2000:]
    error = [line for line in out.stderr.splitlines() if line.startswith("taps-ray: error:")]
    assert len(error) == 1 and "requires token authentication" in error[0]
    assert "RAY_AUTH_TOKEN" in error[0] and "ray get-auth-token" in error[0]
    assert "Traceback" not in out.stderr


def test_a_wrong_token_is_named_as_rejected(token_cluster, tmp_path):
    out = taps_ray(["sweep", "experiments/sweep_mixture.yaml", "--storage-path", str(tmp_path),
                    "--address", token_cluster.address],
                   client_env(token_cluster, RAY_AUTH_TOKEN="wrong-token"))
    assert out.returncode == 2
    assert "rejected the Ray token from RAY_AUTH_TOKEN" in out.stderr
    assert "wrong-token" not in out.stderr  # the token itself is never printed


SWEEP = """
import sys
from taps_ray.config.schema import ExperimentConfig, TrainingConfig, TreeConfig
from taps_ray.distributed.sweep import SearchSpace, SweepConfig, run_sweep
from tests.distributed.tiny_trials import tiny_trial

out_dir, store, address = sys.argv[1:4]
base = ExperimentConfig(training=TrainingConfig(epochs=1, batch_size=4, lr=3e-3),
                        tree=TreeConfig(total_tokens=8, depth=3, top_k=3), output_dir=out_dir)
base.evaluation.benchmarks = ["gsm8k"]
cfg = SweepConfig(name="auth", base=base, space=SearchSpace(lr=[3e-3]), storage_path=store)
out = run_sweep(cfg, trainable=tiny_trial, address=address, verbose=0)
print("SWEEP", len(out.table), list(out.table["status"]), out.best["metric"])
"""


def test_smoke_sweep_with_the_token(token_cluster, tmp_path):
    """Only RAY_AUTH_TOKEN is set (no RAY_AUTH_MODE): the driver turns token mode on itself."""
    (tmp_path / "shared").mkdir()
    env = client_env(token_cluster, RAY_AUTH_TOKEN=token_cluster.token)
    out = subprocess.run([sys.executable, "-c", SWEEP, str(tmp_path / "shared"),
                          str(tmp_path / "store"), token_cluster.address],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SWEEP 1 ['ok'] mean_tau" in out.stdout
    assert (tmp_path / "store" / "auth" / "best_config.yaml").is_file()


@pytest.mark.skipif(data_root() is None, reason="shared/data is not present")
def test_bench_with_the_token_from_a_token_file(token_cluster, tmp_path):
    token_file = tmp_path / "ray-token"
    token_file.write_text(token_cluster.token + "\n")
    env = client_env(token_cluster, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    args = ["bench", "experiments/bench_smoke.yaml", "tree.total_tokens=6", "tree.depth=2",
            "tree.top_k=3", "max_new_tokens=4", "benchmarks=[gsm8k]", "strategies=[single]",
            "replay_prompts_per_benchmark=1", "live_prompts_per_benchmark=1",
            "live_temperatures=[0.0]", "drafter_sets={u: [untrained]}",
            f"results_dir={tmp_path / 'results'}", "--ray", "--workers", "1", "--json",
            "--address", token_cluster.address]
    out = taps_ray(args, env)
    assert out.returncode == 0, out.stderr[-3000:]
    tables = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(tables) == {"T=0 live", "T=0 replay"}
    assert token_cluster.token not in out.stdout + out.stderr


def test_bad_token_files_are_one_sentence(tmp_path, monkeypatch):
    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert token_source() is None
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(TapsError, match="RAY_AUTH_TOKEN_PATH points at .* missing"):
        token_source()
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "empty"))
    with pytest.raises(TapsError, match="unreadable or empty"):
        token_source()
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("")
    with pytest.raises(TapsError, match="auth_token is unreadable or empty"):
        token_source()
    (tmp_path / ".ray" / "auth_token").write_text("abc")
    assert token_source() == str(tmp_path / ".ray" / "auth_token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert token_source() == "RAY_AUTH_TOKEN"


def test_bench_address_needs_ray():
    from taps_ray.cli import main

    assert main(["bench", "experiments/bench_smoke.yaml", "--address", "127.0.0.1:1"]) == 2
