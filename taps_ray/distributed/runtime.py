"""Connecting to Ray: reuse a running session, else `ray.init(address)` with the settings
the driver was given (cache and data folders) passed on to every worker.

Token authentication (Ray >= 2.52, `RAY_AUTH_MODE=token`): the token comes from
`RAY_AUTH_TOKEN`, else the file named by `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`.
Before joining a cluster at an explicit address, one cheap handshake with its GCS tells a
missing or wrong token apart, so the user gets one sentence instead of Ray's 20 s retry loop
ending in a bare ConnectionError.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from taps_ray.errors import TapsError

# Environment the workers must share with the driver: where caches and offline data live.
FORWARDED_ENV = ("TAPS_CACHE_DIR", "TAPS_DATA_DIR", "HF_HOME", "HF_HUB_OFFLINE")
# Set by Ray for a driver started as a Ray job; holds the job's own runtime env.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"  # where `ray get-auth-token --generate` writes it
TOKEN_HELP = (
    f"export {TOKEN_ENV}=<token> (`ray get-auth-token` on the head prints it) or copy the "
    f"token file to {DEFAULT_TOKEN_FILE}"
)
_PROBE_TIMEOUT_S = 5.0  # TCP reachability check before the GCS handshake


def connect(address: str | None = None) -> None:
    """Join the cluster at `address` (None: RAY_ADDRESS, a running local cluster, or a new one)."""
    import ray

    if ray.is_initialized():
        return
    token_source()  # a bad token file aborts Ray's C++ core: check it here first
    target = address or os.environ.get("RAY_ADDRESS")
    if target and _is_gcs_address(target):
        check_cluster_access(target)
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    for key in _job_env_vars():  # a Ray job already forwards these (repeating one is an error)
        env.pop(key, None)
    try:
        ray.init(address=address, runtime_env={"env_vars": env} if env else None)
    except ConnectionError as err:
        raise TapsError(
            f"could not join the Ray cluster at {target or 'auto'} ({err}); check the address "
            f"and that the head is up, and if it uses token authentication, {TOKEN_HELP}"
        ) from None


def token_source() -> str | None:
    """Where this process's Ray token comes from (None: nowhere). A token file that is named
    but missing, unreadable or empty is a TapsError (Ray would abort the process on it)."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return TOKEN_ENV
    if os.environ.get(TOKEN_PATH_ENV):
        path = Path(os.environ[TOKEN_PATH_ENV]).expanduser()
        if not _readable_token(path):
            raise TapsError(
                f"{TOKEN_PATH_ENV} points at '{path}', which is missing, unreadable or empty; "
                f"write the cluster's token there (`ray get-auth-token` prints it) or unset it"
            )
        return str(path)
    default = Path(DEFAULT_TOKEN_FILE).expanduser()
    if default.exists():
        if not _readable_token(default):
            raise TapsError(
                f"the Ray token file {default} is unreadable or empty; write the cluster's "
                f"token into it (`ray get-auth-token` on the head prints it) or delete it"
            )
        return str(default)
    return None


def check_cluster_access(address: str) -> None:
    """A TapsError naming the fix when the cluster at `address` refuses this driver's token
    (or its lack of one). Unreachable addresses are left to `ray.init` to report."""
    if _refusal(address) is None:
        return
    source = token_source()
    if source and os.environ.get(AUTH_MODE_ENV) is None:
        _enable_token_mode()  # a token is here but Ray was not told to send it
        if _refusal(address) is None:
            return
    if source is None:
        raise TapsError(
            f"the Ray cluster at {address} requires token authentication and no token was "
            f"found here; {TOKEN_HELP}, then rerun"
        )
    raise TapsError(
        f"the Ray cluster at {address} rejected the Ray token from {source}; use that "
        f"cluster's token: {TOKEN_HELP}"
    )


def get(refs):
    """`ray.get`, but a TapsError raised inside a task reaches the caller as itself (one line
    for the user, exit 2), not wrapped in a remote traceback."""
    import ray
    from ray.exceptions import RayTaskError

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


def _readable_token(path: Path) -> bool:
    try:
        return bool(path.read_text().strip())
    except (OSError, UnicodeDecodeError):
        return False


def _is_gcs_address(address: str) -> bool:
    """host:port of a GCS (not `auto`, `local` or a `ray://` client address)."""
    host, _, port = address.rpartition(":")
    return "://" not in address and bool(host) and port.isdigit()


def _refusal(address: str) -> str | None:
    """Ray's authentication error from one GCS handshake, or None (accepted, unreachable, or a
    Ray without token authentication). Uses Ray's internal GcsClient: the public
    `ray.init` retries an authentication failure for 20 s before giving up."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), _PROBE_TIMEOUT_S).close()
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except (OSError, ValueError, ImportError):
        return None
    try:
        GcsClient(address=address)
    except AuthenticationError as err:
        return str(err)
    except Exception:  # not a GCS, or a transient failure: ray.init reports it
        return None
    return None


def _enable_token_mode() -> None:
    """RAY_AUTH_MODE=token for this process and its children; Ray caches its config and the
    token at first use, so both are reloaded."""
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ[AUTH_MODE_ENV] = "token"
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _job_env_vars() -> dict:
    try:
        job = json.loads(os.environ.get(JOB_CONFIG_ENV, "{}"))
    except json.JSONDecodeError:
        return {}
    return ((job.get("runtime_env") or {}).get("env_vars") or {}) if isinstance(job, dict) else {}
