"""A 2-node Ray cluster on this machine (one CPU and one custom resource per node), started
and stopped once per test module; caches go to a temporary folder the nodes inherit."""

from __future__ import annotations

import pytest

NODE_RESOURCES = ({"node_a": 1}, {"node_b": 1})


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    from taps_ray.models.target import cache_dir

    env = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("cache")
    if (cache_dir() / "models").is_dir():  # the converted default target, never rebuilt
        (cache / "models").symlink_to(cache_dir() / "models")
    env.setenv("TAPS_CACHE_DIR", str(cache))  # before the nodes start: their workers inherit it
    env.setenv("OMP_NUM_THREADS", "1")
    env.setenv("RAY_DEDUP_LOGS", "0")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": NODE_RESOURCES[0], "include_dashboard": False})
    for resources in NODE_RESOURCES[1:]:
        cluster.add_node(num_cpus=1, resources=resources)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        env.undo()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""
