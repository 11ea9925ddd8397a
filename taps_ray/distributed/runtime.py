"""Connecting to Ray: reuse a running session, else `ray.init(address)` with the settings
the driver was given (cache and data folders) passed on to every worker."""

from __future__ import annotations

import json
import os

# Environment the workers must share with the driver: where caches and offline data live.
FORWARDED_ENV = ("TAPS_CACHE_DIR", "TAPS_DATA_DIR", "HF_HOME", "HF_HUB_OFFLINE")
# Set by Ray for a driver started as a Ray job; holds the job's own runtime env.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def connect(address: str | None = None) -> None:
    """Join the cluster at `address` (None: RAY_ADDRESS, a running local cluster, or a new one)."""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    for key in _job_env_vars():  # a Ray job already forwards these (repeating one is an error)
        env.pop(key, None)
    ray.init(address=address, runtime_env={"env_vars": env} if env else None)


def get(refs):
    """`ray.get`, but a TapsError raised inside a task reaches the caller as itself (one line
    for the user, exit 2), not wrapped in a remote traceback."""
    import ray
    from ray.exceptions import RayTaskError

    from taps_ray.errors import TapsError

    try:
        return ray.get(refs)
    except RayTaskError as err:
        if isinstance(err.cause, TapsError):
            raise err.cause from None
        raise


def set_torch_threads(threads: int) -> None:
    """Intra-op threads of this worker process (0 keeps torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def _job_env_vars() -> dict:
    try:
        job = json.loads(os.environ.get(JOB_CONFIG_ENV, "{}"))
    except json.JSONDecodeError:
        return {}
    return ((job.get("runtime_env") or {}).get("env_vars") or {}) if isinstance(job, dict) else {}
