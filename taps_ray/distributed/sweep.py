"""Ray Tune sweeps over data mixtures and drafter recipes (`taps-ray sweep`).

A sweep is a base ExperimentConfig plus a search space. Each trial trains one drafter with the
ordinary pipeline and reports replay tau per benchmark after every epoch, together with the
trainer's own checkpoint (see trial.py). Before the trials start, the target features of every
distinct data spec are built once (one Ray task per spec), so trials only read caches. After
the sweep the driver writes under `<storage_path>/<name>/` (see outputs.py):
`sweep_table.parquet` + `.md`, `tau_vs_math_fraction.png`, `drafters/` and `best_config.yaml`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from taps_ray.config.loader import apply_overrides, from_dict, to_dict
from taps_ray.config.schema import ExperimentConfig
from taps_ray.errors import TapsError

# search-space key -> the ExperimentConfig field it sets (math_fraction sets data.mixture)
SPACE_FIELDS = {
    "math_fraction": "data.mixture",
    "total": "data.total",
    "method": "drafter.method",
    "align_steps": "training.align_steps",
    "lr": "training.lr",
    "epochs": "training.epochs",
    "w_topk": "training.w_topk",
    "draft_vocab_size": "drafter.draft_vocab_size",
}
DISTRIBUTIONS = ("loguniform", "uniform")  # {name: [low, high]} for float keys (lr, w_topk)


@dataclass
class SearchSpace:
    """Values to sweep. A list is a grid (every value, crossed with every other list); an empty
    list keeps the base config's value. lr and w_topk also take {loguniform|uniform: [lo, hi]},
    sampled anew for each of `num_samples` repeats."""

    math_fraction: list[float] = field(default_factory=list)  # math share; the rest is chat
    total: list[int] = field(default_factory=list)  # data.total (conversations drawn)
    method: list[Literal["eagle2", "hass", "eagle3"]] = field(default_factory=list)  # method
    align_steps: list[int] = field(default_factory=list)  # training.align_steps (HASS J)
    lr: list[float] | dict[str, list[float]] = field(default_factory=list)  # training.lr
    epochs: list[int] = field(default_factory=list)  # training.epochs
    w_topk: list[float] | dict[str, list[float]] = field(default_factory=list)  # HASS top-K
    draft_vocab_size: list[int] = field(default_factory=list)  # drafter.draft_vocab_size

    def __post_init__(self) -> None:
        if any(not 0 <= f <= 1 for f in self.math_fraction):
            raise ValueError("space.math_fraction values must lie in [0, 1]")
        for key in ("lr", "w_topk"):
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, _distribution(f"space.{key}", value))

    def swept(self) -> list[str]:
        """Keys with values to sweep, in SPACE_FIELDS order."""
        return [k for k in SPACE_FIELDS if getattr(self, k)]


@dataclass
class SweepConfig:
    """One Tune experiment: which runs to train and how to pick the best."""

    name: str = "sweep"  # experiment folder under storage_path; reuse it with --resume
    base: ExperimentConfig = field(default_factory=ExperimentConfig)  # every trial starts here
    space: SearchSpace = field(default_factory=SearchSpace)  # what varies between trials
    num_samples: int = 1  # repeats of the grid (distributions are re-sampled each time)
    metric: str = "mean_tau"  # mean_tau, tau_<benchmark> or predicted_speedup; maximised
    # cost profile (`taps-ray calibrate`) of the machine that will serve: trials then also
    # report predicted_speedup (replay tau priced by it, mean over benchmarks, plain = 1)
    speed_profile: str = ""
    speed_cost_as: str = ""  # the profile's drafter whose draft cost prices each trial's head
    scheduler: Literal["none", "asha"] = "none"  # asha stops weak trials at epoch ends
    grace_period: int = 1  # asha: epochs every trial runs before it may be stopped
    search: Literal["grid", "optuna"] = "grid"  # optuna: lists become choices (pip install optuna)
    resources_per_trial: dict[str, float] = field(default_factory=lambda: {"CPU": 1})  # {GPU: 1}
    max_concurrent_trials: int = 0  # 0: as many as the resources allow
    storage_path: str = "runs/sweeps"  # local folder or pyarrow URI (s3://bucket/sweeps)
    max_failures: int = 2  # restarts of a crashed trial, from its last reported checkpoint

    def __post_init__(self) -> None:
        valid = ["mean_tau", *(f"tau_{b}" for b in self.base.evaluation.benchmarks)]
        if bool(self.speed_profile) != bool(self.speed_cost_as):
            raise ValueError("speed_profile and speed_cost_as go together: name the cost profile "
                             "and the drafter in it that prices the trials' heads")
        if self.speed_profile:
            valid.append("predicted_speedup")
        if self.metric not in valid:
            raise ValueError(f"metric '{self.metric}' is not reported; use one of "
                             f"{', '.join(valid)}")
        for key in ("num_samples", "grace_period"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1")
        if self.max_concurrent_trials < 0 or self.max_failures < 0:
            raise ValueError("max_concurrent_trials and max_failures must be >= 0")
        if not self.name or "/" in self.name:
            raise ValueError("name must be a non-empty folder name without '/'")


# ---------------------------------------------------------------------------------------------
# pure helpers: trial configs, distinct data specs, smoke sizes


def mixture_for(fraction: float) -> str:
    """Math share -> data.mixture: 1 -> "math=1.0", 0 -> "chat=1.0", else both parts."""
    if fraction >= 1:
        return "math=1.0"
    if fraction <= 0:
        return "chat=1.0"
    return f"math={fraction:g},chat={1 - fraction:g}"


def drafter_name_for(fraction: float, method: str) -> str:
    """<data>-<method> named after the dominant domain, so math- and chat-heavy trials differ:
    1 -> math, .75 -> math75, .5 -> mix50, .25 -> chat75, 0 -> chat."""
    pct = round(fraction * 100)
    if pct in (0, 100):
        return f"{'math' if pct else 'chat'}-{method}"
    data = f"math{pct}" if pct > 50 else f"chat{100 - pct}" if pct < 50 else "mix50"
    return f"{data}-{method}"


def trial_config(base: ExperimentConfig | dict, params: dict[str, Any]) -> ExperimentConfig:
    """The base config with one trial's values set, re-validated (strict, like the CLI)."""
    data = to_dict(base) if not isinstance(base, dict) else base
    overrides = {SPACE_FIELDS[k]: v for k, v in params.items() if k in SPACE_FIELDS}
    if "math_fraction" in params:
        overrides["data.mixture"] = mixture_for(float(params["math_fraction"]))
    data = _set_dotted(data, overrides)
    cfg = from_dict(ExperimentConfig, data)
    if "math_fraction" in params and not cfg.drafter.name:
        cfg.drafter.name = drafter_name_for(float(params["math_fraction"]), cfg.drafter.method)
    return cfg


def grid_params(space: SearchSpace) -> list[dict[str, Any]]:
    """Every combination of the list-valued (grid) keys, as Tune's grid search expands them;
    distribution-valued keys are sampled by Tune and left out here."""
    keys = [k for k in space.swept() if isinstance(getattr(space, k), list)]
    grids = [getattr(space, k) for k in keys]
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grids)]


def data_specs(cfg: SweepConfig) -> list[ExperimentConfig]:
    """One config per distinct feature cache the trials will read: (mixture, total, and whether
    the method needs EAGLE-3's aux layers)."""
    fractions = cfg.space.math_fraction or [None]
    totals = cfg.space.total or [None]
    methods = cfg.space.method or [None]
    out, seen = [], set()
    for fraction, total, method in itertools.product(fractions, totals, methods):
        params = {k: v for k, v in (("math_fraction", fraction), ("total", total),
                                    ("method", method)) if v is not None}
        trial = trial_config(cfg.base, params)
        key = (trial.data.mixture, trial.data.total, trial.drafter.method == "eagle3")
        if key not in seen:
            seen.add(key)
            out.append(trial)
    return out


def smoke_config(cfg: SweepConfig) -> SweepConfig:
    """Tiny sizes for a run of a few minutes on 2 CPUs: each grid keeps its first and last
    value, 8 conversations, 2 optimizer steps, 2 prompts per benchmark, 16 new tokens."""
    base, evaluation = cfg.base, cfg.base.evaluation
    smoke = {
        "data.total": min(base.data.total, 8),
        "data.max_length": min(base.data.max_length, 128),
        "training.epochs": 1,
        "training.max_steps": 2,
        "training.batch_size": min(base.training.batch_size, 4),
        "evaluation.prompts_per_benchmark": min(evaluation.prompts_per_benchmark or 2, 2),
        "evaluation.max_new_tokens": min(evaluation.max_new_tokens, 16),
        "tree.total_tokens": min(base.tree.total_tokens, 20),
        "tree.depth": min(base.tree.depth, 3),
        "tree.top_k": min(base.tree.top_k, 5),
    }
    base = from_dict(ExperimentConfig, _set_dotted(to_dict(base), smoke))
    # data.total and training.epochs are fixed by the smoke sizes; other grids keep their ends
    ends = {k: _ends(getattr(cfg.space, k)) for k in SPACE_FIELDS if k not in ("total", "epochs")}
    space = replace(cfg.space, **ends, total=[], epochs=[])
    return replace(cfg, name=f"{cfg.name}-smoke", base=base, space=space, num_samples=1)


def load_sweep_config(path: str | None, overrides: list[str] | None = None) -> SweepConfig:
    from taps_ray.config.loader import load_yaml

    data = load_yaml(path) if path else {}
    return from_dict(SweepConfig, apply_overrides(data, overrides or []))


def experiment_path(cfg: SweepConfig) -> str:
    """`<storage_path>/<name>`: an absolute local path, or the URI as given."""
    root = cfg.storage_path
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    return f"{root.rstrip('/')}/{cfg.name}"


def _ends(values):
    return values[:1] + values[-1:] if isinstance(values, list) and len(values) > 2 else values


def _set_dotted(data: dict, values: dict[str, Any]) -> dict:
    out = apply_overrides(data, [])  # a deep copy
    for dotted, value in values.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _distribution(where: str, spec: dict) -> dict[str, list[float]]:
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ValueError(f"{where} must be a list or one of {{{'|'.join(DISTRIBUTIONS)}: "
                         "[low, high]}")
    name, bounds = next(iter(spec.items()))
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"{where}.{name} must be [low, high]") from None
    if not 0 <= low < high or (name == "loguniform" and low == 0):
        raise ValueError(f"{where}.{name} needs 0 < low < high (got [{low}, {high}])")
    return {name: [low, high]}


# ---------------------------------------------------------------------------------------------
# the Tune driver


def param_space(space: SearchSpace, search: str) -> dict[str, Any]:
    """Tune's param_space: grids (or choices for optuna) and distributions per swept key."""
    from ray import tune

    out: dict[str, Any] = {}
    for key in space.swept():
        values = getattr(space, key)
        if isinstance(values, dict):
            (name, (low, high)), = values.items()
            out[key] = getattr(tune, name)(low, high)
        else:
            out[key] = tune.grid_search(values) if search == "grid" else tune.choice(values)
    return out


def run_sweep(
    cfg: SweepConfig,
    *,
    resume: bool = False,
    smoke_test: bool = False,
    address: str | None = None,
    trainable: Any = None,  # (config, base) -> None; default: trial.sweep_trial
    callbacks: list | None = None,  # extra tune.Callback objects (tests interrupt with one)
    verbose: int = 3,  # Tune's console output: 0 silent, 1 status, 2 brief, 3 detailed results
):
    """Run (or resume) the experiment, then write its table, plot and best configuration."""
    from ray import tune

    from taps_ray.distributed import outputs, trial
    from taps_ray.distributed.runtime import connect

    cfg = smoke_config(cfg) if smoke_test else cfg
    path = experiment_path(cfg)
    if resume and not tune.Tuner.can_restore(path):
        raise TapsError(f"no sweep to resume at '{path}'; run it once without --resume")
    if not resume and tune.Tuner.can_restore(path):
        raise TapsError(f"a sweep already exists at '{path}'; pass --resume to continue it "
                        "or set name=... for a new one")
    connect(address)
    params: dict[str, Any] = {"base": _portable_base(cfg.base)}
    if cfg.speed_profile:  # checked here, before any trial starts
        from taps_ray.speed.profile import load_profile

        if cfg.speed_cost_as not in load_profile(cfg.speed_profile).draft_round_s:
            raise TapsError(f"speed_cost_as '{cfg.speed_cost_as}' is not a drafter of "
                            f"{cfg.speed_profile}; calibrate a head of the trials' shape with "
                            "`taps-ray calibrate --drafters` and name it")
        params["speed"] = [str(Path(cfg.speed_profile).resolve()), cfg.speed_cost_as]
    fn = tune.with_resources(
        tune.with_parameters(trainable or trial.sweep_trial, **params),
        dict(cfg.resources_per_trial),
    )
    if resume:
        tuner = tune.Tuner.restore(path, fn, resume_errored=True)
    else:
        tune_config = _tune_config(cfg)  # a missing optuna fails before any work starts
        if trainable is None:
            trial.prepare_data(cfg)
        tuner = tune.Tuner(fn, param_space=param_space(cfg.space, cfg.search),
                           tune_config=tune_config,
                           run_config=_run_config(cfg, callbacks, verbose))
    grid = tuner.fit()
    return outputs.write_outputs(cfg, grid, path)


def _portable_base(base: ExperimentConfig) -> dict:
    """The base config as trials get it: a target given as a relative local folder is made
    absolute (Tune runs each trial in its own working directory)."""
    data = to_dict(base)
    folder = Path(base.target.name).expanduser()
    if not folder.is_absolute() and folder.is_dir():
        data["target"]["name"] = str(folder.resolve())
    return data


def _tune_config(cfg: SweepConfig):
    from ray import tune

    scheduler = None
    if cfg.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        max_t = max(cfg.space.epochs or [cfg.base.training.epochs])
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                  grace_period=min(cfg.grace_period, max_t))
    search_alg = None
    if cfg.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise TapsError("search: optuna needs the optuna package; pip install optuna") from None
        search_alg = OptunaSearch()
    return tune.TuneConfig(metric=cfg.metric, mode="max", scheduler=scheduler,
                           search_alg=search_alg, num_samples=cfg.num_samples,
                           max_concurrent_trials=cfg.max_concurrent_trials or None)


def _run_config(cfg: SweepConfig, callbacks: list | None, verbose: int = 3):
    from ray import tune

    root, _, name = experiment_path(cfg).rpartition("/")
    return tune.RunConfig(
        name=name,
        storage_path=root,
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # each is a full drafter
        callbacks=callbacks,
        verbose=verbose,
    )
