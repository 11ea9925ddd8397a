"""`taps-ray serve CONFIG`: an OpenAI-compatible endpoint on Ray Serve.

CONFIG is one of:
- a Serve config file (`serve_apps/*.yaml`: http_options + applications), the same file
  `serve run` / `serve deploy` take;
- a sweep's best configuration (`DIR/best_config.yaml`: target, drafters, strategy,
  strategy_options, tree, policy; `strategy: plain` serves plain decoding);
- a ServeConfig mapping (the `args:` of a Serve app, see taps_ray/serving/config.py).

Decoding uses the adaptive speed policy by default (trees cut to the tokens/s-optimal size, plain
steps while speculation is slower), from this machine's cost profile when `taps-ray calibrate`
saved one; `--policy fixed` verifies the whole tree every step, `--profile FILE` names a profile.

A host other machines can reach (anything but loopback) is refused unless every app names an
`api_key_env`, or opts out by name with `allow_unauthenticated: true` (private networks only).
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import os
import signal
import time
from pathlib import Path
from typing import Any

from taps_ray.config.loader import apply_overrides, load_yaml
from taps_ray.errors import TapsError
from taps_ray.serving.config import POLICIES

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000  # loopback unless the config says otherwise
_APP_KEYS = {"name", "route_prefix", "import_path", "args"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve an OpenAI-compatible endpoint (Ray Serve)")
    p.add_argument("config", help="serve_apps/*.yaml, or a sweep's best_config.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the app args")
    p.add_argument("--host", help=f"bind address (default: config, else {DEFAULT_HOST})")
    p.add_argument("--port", type=int, help=f"port (default: config, else {DEFAULT_PORT})")
    p.add_argument("--address", default=None,
                   help="Ray cluster to deploy onto (default: RAY_ADDRESS, a running cluster, "
                        "or a new one); a cluster with token auth needs RAY_AUTH_TOKEN or "
                        "~/.ray/auth_token")
    p.add_argument("--policy", choices=POLICIES, default=None,
                   help="speed policy of every app (default: the config's, else adaptive)")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="cost profile JSON (default: this machine's, if calibrated)")
    p.add_argument("--check", action="store_true", help="validate, print the plan, serve nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    http, apps = read_plan(Path(args.config), args.overrides + _speed_overrides(args))
    http = {**http, **{k: v for k, v in (("host", args.host), ("port", args.port)) if v}}
    _check_llm_apps(apps, serving=not args.check)
    builds = [(app, _app_builder(app, args.check)) for app in apps]
    check_exposure(http, apps)
    _check_profiles(apps)
    if args.check:
        return _print_plan(http, builds)
    _check_keys(builds)
    import ray
    from ray import serve

    from taps_ray.distributed.runtime import connect

    connect(args.address)  # token checks first: one sentence, not Ray's retry loop
    try:
        serve.start(http_options=http)
        for app, builder in builds:
            name, prefix = app.get("name", "default"), app.get("route_prefix", "/")
            serve.run(builder(app.get("args", {})), name=name, route_prefix=prefix)
        print(f"serving at http://{http['host']}:{http['port']}/v1 (Ctrl-C stops)", flush=True)
        _wait_for_signal()
    except RuntimeError as err:  # an app's replicas failed to start (Serve gave up)
        raise TapsError(_deploy_failure(str(err))) from None
    except (ray.exceptions.RayError, TimeoutError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TapsError(
            f"Ray Serve did not start ({type(err).__name__}: {first}); check that port "
            f"{http['port']} is free and the machine is not overloaded, then rerun"
        ) from None
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def _speed_overrides(args: argparse.Namespace) -> list[str]:
    pairs = (("policy", args.policy), ("profile", args.profile))
    return [f"{key}={value}" for key, value in pairs if value]


def _check_profiles(apps: list[dict[str, Any]]) -> None:
    """A profile file named in an app's args must exist and parse, before anything starts
    (whether it fits this hardware is checked where the replica loads the target)."""
    from taps_ray.serving.policy import check_profile_file

    for app in apps:
        profile = (app.get("args") or {}).get("profile")
        if profile:
            check_profile_file(Path(str(profile)).expanduser())


def _check_llm_apps(apps: list[dict[str, Any]], serving: bool) -> None:
    """Ray Serve LLM apps (vLLM engine, e.g. a `drafter export` folder's serve_llm.yaml) are
    validated with Ray's schema; serving them needs vLLM installed."""
    from taps_ray.serving.vllm_app import check_llm_app, is_llm_app

    for app in apps:
        if is_llm_app(app):
            check_llm_app(app, serving)


def _app_builder(app: dict[str, Any], checking: bool):
    """The app's builder; none for a Ray Serve LLM app under --check (ray.serve.llm imports
    only where vLLM or SGLang is installed)."""
    from taps_ray.serving.vllm_app import is_llm_app

    return None if checking and is_llm_app(app) else _builder(app["import_path"])


def _deploy_failure(message: str) -> str:
    """One sentence for a failed deployment: the replica's own TapsError when there is one."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in reversed(lines):
        if "TapsError: " in line:
            return line.split("TapsError: ", 1)[1]
    first = lines[0] if lines else "no message"
    return f"the app did not start ({first}); see the replica logs (ray logs) for why"


def _wait_for_signal() -> None:
    """Block until Ctrl-C or SIGTERM (so `kill` also shuts Serve and Ray down cleanly)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)


def read_plan(path: Path, overrides: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(http_options, applications) of any CONFIG kind; overrides apply to every app's args."""
    from taps_ray.serving.config import BEST_CONFIG_FIELDS

    data = load_yaml(path)
    if "applications" in data:
        http = {"host": DEFAULT_HOST, "port": DEFAULT_PORT, **(data.get("http_options") or {})}
        apps = [_serve_app(path, i, app) for i, app in enumerate(data["applications"] or [])]
    else:
        args = {"best_config": str(path)} if set(data) <= BEST_CONFIG_FIELDS else data
        apps = [{"name": "taps", "import_path": "taps_ray.serving.app:build_app", "args": args}]
        http = {"host": DEFAULT_HOST, "port": DEFAULT_PORT}
    if not apps:
        raise TapsError(f"config '{path}' lists no applications; add one under 'applications'")
    for app in apps:
        app["args"] = apply_overrides(app.get("args") or {}, overrides)
    return http, apps


def _serve_app(path: Path, i: int, app: Any) -> dict[str, Any]:
    if not isinstance(app, dict) or "import_path" not in app:
        raise TapsError(f"{path}: applications[{i}] needs an import_path")
    extra = sorted(set(app) - _APP_KEYS)
    if extra:
        raise TapsError(
            f"{path}: applications[{i}].{extra[0]} is not read by taps-ray serve (it reads "
            f"{', '.join(sorted(_APP_KEYS))}); use `serve run {path}` for the full Serve schema"
        )
    return dict(app)


def _builder(import_path: str):
    module, _, attr = import_path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise TapsError(
            f"import_path '{import_path}' is not importable; use module:function"
        ) from None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_exposure(http: dict[str, Any], apps: list[dict[str, Any]]) -> None:
    """A host other machines can reach needs api_key_env on every app, or the named opt-out
    `allow_unauthenticated: true` (for private networks); else one sentence, nothing starts."""
    host = str(http.get("host", DEFAULT_HOST))
    if is_loopback(host):
        return
    for app in apps:
        args = app.get("args") or {}
        if args.get("api_key_env"):
            continue
        name = app.get("name", "default")
        if args.get("allow_unauthenticated") is True:
            print(f"warning: app {name} on {host} accepts requests without an API key "
                  "(allow_unauthenticated)", flush=True)
            continue
        raise TapsError(
            f"http host '{host}' accepts connections from other machines but app '{name}' has "
            "no api_key_env; set api_key_env to the name of an env var holding the key, bind "
            "127.0.0.1, or add allow_unauthenticated=true on a private network"
        )


def _check_keys(builds: list) -> None:
    """An API key env var named in the config must be set here (Ray's workers inherit it)."""
    for app, _ in builds:
        name = (app.get("args") or {}).get("api_key_env")
        if name and not os.environ.get(name, "").strip():
            raise TapsError(f"api_key_env names '{name}' but it is unset; export {name} first")


def _print_plan(http: dict[str, Any], builds: list) -> int:
    from taps_ray.config.loader import to_dict
    from taps_ray.serving.config import load_serve_config, missing_folders, resolve_config

    print(f"http: {http['host']}:{http['port']}")
    for app, _ in builds:
        print(f"app {app.get('name', 'default')} at {app.get('route_prefix', '/')}:")
        if app["import_path"].endswith("serving.app:build_app"):
            config = resolve_config(load_serve_config(app["args"]))
            for key, value in to_dict(config).items():
                print(f"  {key}: {value}")
            for folder in missing_folders(config.drafters):
                print(f"  missing drafter folder: {folder}")
    return 0
