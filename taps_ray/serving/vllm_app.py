"""Ray Serve LLM apps: the target on vLLM with an exported EAGLE drafter (GPU clusters).

A `ray.serve.llm:build_openai_app` app whose one LLMConfig loads the target and names the drafter
folder written by `taps-ray drafter export --format vllm` in vLLM's `speculative_config`. vLLM
verifies drafts itself; taps-ray's strategies (routing, merged trees) do not apply there.

API names checked against the installed Ray 2.60 (`ray/serve/llm/__init__.py`:
`build_openai_app(llm_serving_args: dict)`, `LLMServingArgs.llm_configs`, `LLMConfig` fields
`model_loading_config`, `engine_kwargs`, `deployment_config`). `ray.serve.llm` itself imports
only where vLLM or SGLang is installed, so `--check` validates elsewhere with the LLMConfig model
it re-exports.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from taps_ray.config.schema import TreeConfig
from taps_ray.errors import TapsError

BUILDER = "ray.serve.llm:build_openai_app"
_SERVING_ARGS = {"llm_configs", "ingress_cls_config", "ingress_deployment_config"}  # Ray 2.60


def llm_app_args(target: str, drafter_dir: str | Path, tree: TreeConfig, model_id: str,
                 method: str = "eagle") -> dict:
    """`args` of the Serve app: one LLMConfig with vLLM's speculative_config (method eagle or
    eagle3, the drafter's layout)."""
    from taps_ray.models.eagle_format import vllm_speculative_config

    return {
        "llm_configs": [{
            "model_loading_config": {"model_id": model_id, "model_source": target},
            "engine_kwargs": {
                "speculative_config": vllm_speculative_config(Path(drafter_dir), tree, method),
            },
            "deployment_config": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        }],
    }


def serve_yaml(target: str, drafter_dir: str | Path, tree: TreeConfig, model_id: str,
               method: str = "eagle") -> str:
    """A Serve config file (`serve run FILE` or `taps-ray serve FILE`) for the app above."""
    import yaml

    config = {
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": [{
            "name": "taps-vllm",
            "route_prefix": "/",
            "import_path": BUILDER,
            "args": llm_app_args(target, drafter_dir, tree, model_id or "taps-drafted", method),
        }],
    }
    header = ("# Ray Serve LLM: the target on vLLM with an EAGLE drafter (GPU nodes need vllm).\n"
              "# Validate here: taps-ray serve THIS_FILE --check\n")
    return header + yaml.safe_dump(config, sort_keys=False)


def is_llm_app(app: dict[str, Any]) -> bool:
    return str(app.get("import_path", "")).startswith("ray.serve.llm:")


def check_llm_app(app: dict[str, Any], serving: bool) -> None:
    """Validate a Ray Serve LLM app's args with Ray's own schema; serving also needs vLLM."""
    from pydantic import ValidationError

    name = app.get("name", "default")
    args = app.get("args") or {}
    if serving and importlib.util.find_spec("vllm") is None:
        raise TapsError(
            f"app '{name}' runs on vLLM, which is not installed here; install vllm on the GPU "
            "nodes (pip install vllm) or validate only with --check"
        )
    try:
        _validate(args)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise TapsError(
            f"app '{name}' has invalid Ray Serve LLM args at {where}: {first.get('msg')}; "
            "fix the config"
        ) from None


def _validate(args: dict[str, Any]) -> None:
    """LLMServingArgs where ray.serve.llm imports (it needs vLLM or SGLang); elsewhere the same
    LLMConfig model it subclasses, per entry of llm_configs (Ray 2.60 keeps it importable)."""
    try:
        from ray.serve.llm import LLMServingArgs
    except ImportError:
        from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
    else:
        LLMServingArgs.model_validate(args)
        return
    extra = sorted(set(args) - _SERVING_ARGS)
    if extra or not isinstance(args.get("llm_configs"), list) or not args["llm_configs"]:
        raise TapsError(
            f"Ray Serve LLM args need a non-empty llm_configs list and no other keys than "
            f"{', '.join(sorted(_SERVING_ARGS))} (got {', '.join(sorted(args)) or 'none'})"
        )
    for config in args["llm_configs"]:
        LLMConfig.model_validate(config)
