"""The Ray Serve deployment and its typed builder, named in Serve YAML files:

    import_path: taps_ray.serving.app:build_app
    args: {target: ..., drafters: [...], strategy: route-confidence, ...}   # a ServeConfig

`serve run serve_apps/default.yaml`, `serve deploy ...` and `taps-ray serve CONFIG` all end here.
Models are loaded once per replica, in the constructor, which also starts the replica's batch
(with `batching: continuous`); Serve replaces a replica whose `check_health` fails and calls
`__del__` when it shuts one down, which stops the batch.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve
from ray.serve import Application

from taps_ray.errors import TapsError
from taps_ray.serving.config import (
    ServeConfig,
    deployment_options,
    load_serve_config,
    resolve_config,
)

logger = logging.getLogger("ray.serve")


@serve.deployment
@serve.ingress()
class SpeculativeDecoder:
    """One replica: target + drafters, its batch (or `engines_per_replica` decoding threads),
    the HTTP app, and a thread publishing the replica's load every second."""

    def __init__(self, config: ServeConfig):
        from taps_ray.serving.metrics import ServeMetrics
        from taps_ray.serving.service import load_service

        self.stopping, self.service = threading.Event(), None  # for __del__ if loading fails
        self.api_key = read_api_key(config.api_key_env)
        self.service = load_service(config, log=logger.warning)
        self.pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="decode")
        self.metrics = ServeMetrics()
        self.metrics.live(self.service.live.snapshot())  # gauges exist before the first request
        threading.Thread(target=self._publish_load, name="load-metrics", daemon=True).start()

    def __serve_build_asgi_app__(self):
        from taps_ray.serving.http import build_http_app

        return build_http_app(self.service, self.pool, self.metrics, self.api_key)

    def check_health(self) -> None:
        self.service.check_health()

    def __del__(self) -> None:
        self.stopping.set()
        if self.service is not None:
            self.service.close()

    def _publish_load(self, period_s: float = 1.0) -> None:
        while not self.stopping.wait(period_s):
            self.metrics.load(self.service.load())
            self.metrics.live(self.service.live.snapshot())  # decays to 0 when idle


def read_api_key(env_name: str) -> str | None:
    """The key from the named env var (never from a file or the config); None: no auth."""
    if not env_name:
        return None
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise TapsError(
            f"api_key_env names '{env_name}' but that environment variable is unset or empty "
            "where the replica runs; export it before starting Ray, or drop api_key_env"
        )
    return key


def build_app(args: dict[str, Any] | ServeConfig) -> Application:
    """Typed app builder: `args` is a ServeConfig mapping (strict: unknown keys are errors)."""
    config = resolve_config(load_serve_config(args))
    return SpeculativeDecoder.options(**deployment_options(config)).bind(config)
