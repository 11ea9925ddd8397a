"""The shipped launch configs expose nothing without authentication: cluster.yaml (Ray cluster
launcher), every KubeRay manifest in deploy/, and every Serve config in serve_apps/. Each check
returns the problems it finds, so a broken copy of a config shows what it catches."""

from __future__ import annotations

import copy
import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from taps_ray.cli.serve_cmd import check_exposure, read_plan
from taps_ray.errors import TapsError

REPO = Path(__file__).resolve().parents[2]
TOKEN_FILE = "~/.ray/auth_token"
KUBERAY_KINDS = {"RayCluster": ("spec",), "RayJob": ("spec", "rayClusterSpec"),
                 "RayService": ("spec", "rayClusterConfig")}


def _loopback(host: str) -> bool:
    host = host.strip().strip("'\"[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cluster_launcher_problems(config: dict) -> list[str]:
    """Ray starts with token auth after a token check, the dashboard stays on loopback, the
    token reaches every node, and the security group opens no Ray port to the internet."""
    problems = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = [str(c) for c in config.get(key) or []]
        starts = [i for i, c in enumerate(commands) if "ray start" in c]
        if not starts:
            problems.append(f"{key}: no `ray start`")
        for i in starts:
            if not re.search(r"(^|[\s;])RAY_AUTH_MODE=token\s", commands[i]):
                problems.append(f"{key}[{i}]: ray start without RAY_AUTH_MODE=token")
            if not any(f"test -s {TOKEN_FILE}" in c for c in commands[:i]):
                problems.append(f"{key}[{i}]: no check that {TOKEN_FILE} exists first")
            for host in re.findall(r"--dashboard-host[= ](\S+)", commands[i]):
                if not _loopback(host):
                    problems.append(f"{key}[{i}]: dashboard bound to {host}")
    if TOKEN_FILE not in (config.get("file_mounts") or {}):
        problems.append(f"file_mounts: {TOKEN_FILE} is not copied to the nodes")
    for rule in (config.get("provider", {}).get("security_group") or {}).get("IpPermissions", []):
        open_to_all = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or \
            any(r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", []))
        if open_to_all and not rule.get("FromPort") == rule.get("ToPort") == 22:
            problems.append(f"security_group opens ports {rule.get('FromPort')}-"
                            f"{rule.get('ToPort')} to the internet")
    return problems


def _dig(doc: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        doc = (doc or {}).get(key) or {}
    return doc


def _containers(spec: dict) -> list[dict]:
    groups = [spec.get("headGroupSpec") or {}, *(spec.get("workerGroupSpecs") or [])]
    return [c for g in groups for c in _dig(g, ("template", "spec")).get("containers") or []]


def _env_token_auth(container: dict) -> bool:
    env = {e.get("name"): e for e in container.get("env") or []}
    mode = (env.get("RAY_AUTH_MODE") or {}).get("value")
    token = _dig(env.get("RAY_AUTH_TOKEN") or {}, ("valueFrom", "secretKeyRef"))
    return mode == "token" and bool(token)


def kuberay_problems(docs: list[dict]) -> list[str]:
    """Token auth (authOptions, or env + Secret on every container); no Service but ClusterIP,
    no Ingress, no host ports or host network."""
    problems = []
    for doc in docs:
        kind, name = doc.get("kind"), _dig(doc, ("metadata",)).get("name")
        if kind == "Ingress":
            problems.append(f"Ingress {name} exposes the cluster")
        if kind == "Service" and _dig(doc, ("spec",)).get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"Service {name} is reachable from outside the cluster")
        if kind not in KUBERAY_KINDS:
            continue
        spec = _dig(doc, KUBERAY_KINDS[kind])
        containers = _containers(spec)
        if _dig(spec, ("authOptions",)).get("mode") != "token" and not (
                containers and all(_env_token_auth(c) for c in containers)):
            problems.append(f"{kind} {name}: no token authentication")
        head = spec.get("headGroupSpec") or {}
        if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
            problems.append(f"{kind} {name}: the head Service is reachable from outside")
        for c in containers:
            if any("hostPort" in p for p in c.get("ports") or []):
                problems.append(f"{kind} {name}: container {c.get('name')} uses a hostPort")
        groups = [head, *(spec.get("workerGroupSpecs") or [])]
        if any(_dig(g, ("template", "spec")).get("hostNetwork") for g in groups):
            problems.append(f"{kind} {name}: hostNetwork binds Ray on the node's interfaces")
    return problems


def test_cluster_yaml_is_authenticated_and_closed():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert cluster_launcher_problems(config) == []


def test_the_check_catches_an_open_cluster_yaml():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    bad = copy.deepcopy(config)
    bad["head_start_ray_commands"] = ["ray stop", "ray start --head --dashboard-host=0.0.0.0"]
    del bad["file_mounts"][TOKEN_FILE]
    bad["provider"]["security_group"] = {"IpPermissions": [
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp",
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}
    problems = "\n".join(cluster_launcher_problems(bad))
    for needle in ("without RAY_AUTH_MODE=token", "exists first", "bound to 0.0.0.0",
                   "not copied", "8265-8265 to the internet"):
        assert needle in problems


def test_kuberay_manifests_are_authenticated_and_cluster_internal():
    files = sorted((REPO / "deploy").glob("*.yaml"))
    assert files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert any(d.get("kind") in KUBERAY_KINDS for d in docs), path
        assert kuberay_problems(docs) == [], path


def test_the_check_catches_an_open_kuberay_manifest():
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "kuberay-rayjob.yaml").read_text())
            if d]
    bad = copy.deepcopy(docs)
    spec = bad[0]["spec"]["rayClusterSpec"]
    del spec["authOptions"]
    spec["headGroupSpec"]["serviceType"] = "LoadBalancer"
    bad.append({"kind": "Service", "metadata": {"name": "dash"}, "spec": {"type": "NodePort"}})
    problems = "\n".join(kuberay_problems(bad))
    for needle in ("no token authentication", "head Service is reachable",
                   "Service dash is reachable"):
        assert needle in problems


def test_shipped_serve_configs_need_a_key_off_loopback():
    for path in sorted((REPO / "serve_apps").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if "applications" not in data:
            continue  # a best_config example: served on the loopback default
        http, apps = read_plan(path, [])
        check_exposure(http, apps)  # raises on an open host without api_key_env
        with pytest.raises(TapsError, match="api_key_env"):
            check_exposure({**http, "host": "0.0.0.0"},
                           [{**a, "args": {**a["args"], "api_key_env": ""}} for a in apps])


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_token_files_are_git_ignored():
    paths = [".ray/auth_token", "auth_token", "deploy/ray-token-secret.yaml"]
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode == 128:
        pytest.skip("not a git checkout")
    assert out.stdout.split() == paths
