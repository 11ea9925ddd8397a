"""Serving configuration: the typed args of `build_app`, and a sweep's best-configuration file.

`ServeConfig` is what a Serve YAML passes as `args:` (strict: unknown keys are errors that list
the valid ones). `BestConfig` is the small file a sweep writes for the configuration it chose;
`ServeConfig.best_config` points at one, and `taps-ray serve DIR/best_config.yaml` serves it.
Paths are made absolute once, in `resolve_config`, so replicas never read relative paths.
A drafter is a folder or a prompt-lookup spec ('prompt-lookup[:option=value,...]', kept as is).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from taps_ray.config.loader import from_dict, load_yaml, save_config
from taps_ray.config.schema import DEFAULT_TARGET, TreeConfig
from taps_ray.errors import TapsError

PLAIN = "none"  # strategy name for plain autoregressive decoding (no drafters)
PLAIN_ALIASES = ("plain",)  # what a best configuration may say instead (the bench's label)
POLICIES = ("adaptive", "fixed")  # taps_ray.decoding.adaptive.make_policy modes


@dataclass
class BestConfig:
    """What a sweep chose. Relative drafter paths: next to the YAML first, then the working dir."""

    target: str = DEFAULT_TARGET  # alias, hub id or local HF folder
    drafters: list[str] = field(default_factory=list)  # folders or prompt-lookup specs
    strategy: str = "single"  # a name in taps_ray.decoding.strategies, or "none"/"plain"
    strategy_options: dict[str, Any] = field(default_factory=dict)  # e.g. {granularity: prompt}
    tree: TreeConfig = field(default_factory=TreeConfig)  # draft tree shape verified per step
    policy: Literal["adaptive", "fixed"] = "adaptive"  # fixed: verify the whole tree every step
    metric: str = ""  # what the sweep ranked trials by (e.g. mean_tau); informational
    value: float | None = None  # the best trial's metric value; informational
    reason: str = ""  # why this configuration (e.g. why plain decoding); informational


_INFORMATIONAL = ("metric", "value", "reason")
# every key a best configuration file may hold (how `taps-ray serve FILE` tells its kind)
BEST_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(BestConfig))
# what a best configuration decides for the served app (policy only unless the app sets one)
BEST_CONFIG_KEYS = frozenset(
    f.name for f in dataclasses.fields(BestConfig) if f.name not in (*_INFORMATIONAL, "policy")
)


def load_best_config(path: str | Path) -> BestConfig:
    try:
        return from_dict(BestConfig, load_yaml(path))
    except TapsError as err:
        raise TapsError(f"best configuration '{path}': {err}") from None


def save_best_config(config: BestConfig, path: str | Path) -> None:
    """Write atomically (temp name, then rename): a sweep's output is never half-written."""
    save_config(config, path)


@dataclass
class ServeConfig:
    """Arguments of `build_app`: what to serve and how much load one replica takes."""

    target: str = DEFAULT_TARGET  # alias, hub id or local HF folder; loaded once per replica
    model_name: str = ""  # id clients send as `model`; empty: the target's name
    drafters: list[str] = field(default_factory=list)  # drafter folders or prompt-lookup specs
    strategy: str = PLAIN  # default strategy; "none" = plain decoding
    strategy_options: dict[str, Any] = field(default_factory=dict)  # options of that strategy
    tree: TreeConfig = field(default_factory=TreeConfig)  # draft tree (smaller is faster on CPU)
    # speed policy: "adaptive" cuts trees to the tokens/s-optimal size and falls back to plain
    # steps while speculation is slower; "fixed" verifies the whole tree (the study's setting);
    # "": the best configuration's, else adaptive
    policy: Literal["", "adaptive", "fixed"] = ""
    profile: str = ""  # cost profile JSON (taps-ray calibrate); "": this machine's, if saved
    best_config: str = ""  # a sweep's best_config.yaml; replaces target..tree above
    missing_drafters: Literal["error", "plain"] = "error"  # "plain": serve none until they exist
    device: str | None = None  # None: cuda if available, else cpu
    default_max_tokens: int = 128  # when a request gives no max_tokens
    max_tokens_limit: int = 1024  # larger max_tokens get 400 (bounds one request's cost)
    max_context: int = 0  # prompt + max_tokens limit; 0: the target's max_position_embeddings
    api_key_env: str = ""  # name of an env var holding the API key; empty: no auth
    # serve a non-loopback host without api_key_env (private networks only; else refused)
    allow_unauthenticated: bool = False
    # continuous: a replica decodes its requests together, one batched step at a time, and
    # requests join and leave between steps; off: one thread per request (engines_per_replica)
    batching: Literal["continuous", "off"] = "continuous"
    max_batch_size: int = 16  # sequences one batched step decodes (batching: continuous)
    batch_queue: int = 16  # requests a replica holds waiting for a batch slot; beyond: 503
    prefill_chunk: int = 128  # prompt tokens prefilled per step, so running sequences go on
    # who decides per batched step whether trees are verified: "cost" the batch cost model
    # (Tb(B, q) of the profile, else measured online), "sequence" each request's own speed
    # policy as if alone, "off" plain steps only (drafters unused while batched)
    batch_speculation: Literal["cost", "sequence", "off"] = "cost"
    engines_per_replica: int = 1  # batching off: requests decoded at once per replica (threads)
    torch_threads: int = 0  # intra-op threads per replica; 0: torch's default
    num_replicas: int = 1  # fixed replica count (ignored when autoscaling is set)
    autoscaling: dict[str, Any] = field(default_factory=dict)  # Serve autoscaling_config; {}: off
    # per replica; more wait in Serve's queue. 0: max_batch_size + batch_queue with batching
    # (what the replica's batch and queue hold), else 4
    max_ongoing_requests: int = 0
    max_queued_requests: int = 32  # beyond this Serve answers 503 + Retry-After; -1: no limit
    retry_after_s: float = 2.0  # the Retry-After (seconds, rounded up) sent with that 503
    replica_cpus: float = 1.0  # CPUs Ray reserves per replica
    health_check_period_s: float = 10.0  # how often Serve calls check_health

    def __post_init__(self) -> None:
        for key in ("default_max_tokens", "max_tokens_limit", "engines_per_replica"):
            _at_least(key, getattr(self, key), 1)
        for key in ("num_replicas", "max_batch_size", "batch_queue", "prefill_chunk"):
            _at_least(key, getattr(self, key), 1)
        for key in ("max_context", "max_ongoing_requests"):
            _at_least(key, getattr(self, key), 0)
        _at_least("torch_threads", self.torch_threads, 0)
        _at_least("max_queued_requests", self.max_queued_requests, -1)
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens must be <= max_tokens_limit; lower it too")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must be >= 0 (seconds a rejected client waits)")
        if self.replica_cpus < 0 or self.health_check_period_s <= 0:
            raise ValueError("replica_cpus must be >= 0 and health_check_period_s > 0")
        if self.batched and 0 < self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) is below max_batch_size "
                f"({self.max_batch_size}), so a replica's batch could never fill; raise it, "
                "lower max_batch_size, or set it to 0 (max_batch_size + batch_queue)")

    @property
    def batched(self) -> bool:
        return self.batching == "continuous"

    @property
    def ongoing_limit(self) -> int:
        """Requests Serve sends one replica at once (the rest wait in Serve's queue)."""
        if self.max_ongoing_requests:
            return self.max_ongoing_requests
        return self.max_batch_size + self.batch_queue if self.batched else 4

    @property
    def decode_threads(self) -> int:
        """Worker threads a replica needs: one per request it decodes or holds in its queue
        (batching: the threads only turn the batch's tokens into text; the batch decodes)."""
        return self.max_batch_size + self.batch_queue if self.batched \
            else self.engines_per_replica

    @property
    def served_name(self) -> str:
        return self.model_name or Path(self.target.rstrip("/")).name


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{key} must be >= {low}, got {value}")


def load_serve_config(args: dict[str, Any] | ServeConfig) -> ServeConfig:
    """Strict: unknown keys and wrong types are TapsErrors naming the key."""
    if isinstance(args, ServeConfig):
        return args
    args = dict(args)
    if isinstance(args.get("batching"), bool):  # YAML 1.1 reads an unquoted off/on as a bool
        args["batching"] = "continuous" if args["batching"] else "off"
    return from_dict(ServeConfig, args)


def resolve_config(config: ServeConfig, cwd: Path | None = None) -> ServeConfig:
    """Merge the best configuration in and make drafter paths absolute; check the strategy."""
    cwd = Path.cwd() if cwd is None else cwd
    policy = config.policy
    if config.best_config:
        path = _absolute(config.best_config, [cwd])
        best = load_best_config(path)
        drafters = [_drafter_path(d, [path.parent, cwd]) for d in best.drafters]
        chosen = {k: getattr(best, k) for k in BEST_CONFIG_KEYS}
        chosen.update(drafters=drafters, best_config=str(path))
        config = dataclasses.replace(config, **chosen)
        policy = policy or best.policy  # the app's own setting wins (the study asks for fixed)
    else:
        config = dataclasses.replace(
            config, drafters=[_drafter_path(d, [cwd]) for d in config.drafters]
        )
    profile = str(_absolute(config.profile, [cwd])) if config.profile else ""
    config = dataclasses.replace(config, policy=policy or "adaptive", profile=profile)
    if config.strategy in PLAIN_ALIASES:
        config = dataclasses.replace(config, strategy=PLAIN, drafters=[])  # nothing to load
    check_strategy(config.strategy, config.strategy_options)
    if config.strategy != PLAIN and not config.drafters:
        raise TapsError(f"strategy '{config.strategy}' needs drafters; list drafter folders")
    return config


def check_strategy(name: str, options: dict) -> None:
    """A TapsError listing the valid names (and options) unless `name` is servable."""
    from taps_ray.decoding.strategies import strategy_class, strategy_names

    if name == PLAIN:
        return
    if name not in strategy_names():
        valid = ", ".join([PLAIN, *strategy_names()])
        raise TapsError(f"unknown strategy '{name}'; valid: {valid}")
    strategy_class(name, options)


def is_spec(drafter: str) -> bool:
    """True for a drafter named by a spec rather than a folder (prompt lookup)."""
    from taps_ray.decoding.prompt_lookup import DRAFTER_NAME

    return drafter.partition(":")[0] == DRAFTER_NAME


def _drafter_path(drafter: str, bases: list[Path]) -> str:
    return drafter if is_spec(drafter) else str(_absolute(drafter, bases))


def _absolute(path: str, bases: list[Path]) -> Path:
    """`path` itself when absolute, else the first base holding it (the first base if none)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in bases:
        if (base / p).exists():
            return (base / p).resolve()
    return (bases[0] / p).resolve()


def missing_folders(paths: list[str]) -> list[str]:
    return [p for p in paths if not is_spec(p) and not Path(p).is_dir()]


def deployment_options(config: ServeConfig) -> dict[str, Any]:
    """Options for `serve.deployment(...).options(...)`: capacity, scaling, health checks.

    With batching, Serve should hand a replica at least a full batch (`max_ongoing_requests` >=
    `max_batch_size`, checked in ServeConfig); by default it hands what the batch and the
    replica's queue hold, so requests beyond that wait in Serve's queue (where the router can
    send them to whichever replica frees first) and beyond `max_queued_requests` get Serve's 503.
    """
    options: dict[str, Any] = {
        "max_ongoing_requests": config.ongoing_limit,
        "max_queued_requests": config.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": config.retry_after_s},
        "ray_actor_options": {"num_cpus": config.replica_cpus},
        "health_check_period_s": config.health_check_period_s,
    }
    if config.autoscaling:
        options["autoscaling_config"] = dict(config.autoscaling)
    else:
        options["num_replicas"] = config.num_replicas
    return options
