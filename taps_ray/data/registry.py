"""The dataset registry: six named datasets, resolved local-first, then the hub.

Resolution order for a name: the local copy under `data_root()` (see paths.py), then the
Hugging Face hub through `datasets` when it is reachable, else a TapsError that names the
local file to provide. Nothing is cached between calls.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from taps_ray.data import parsers
from taps_ray.data.files import count_lines, is_json_lines, iter_rows
from taps_ray.data.hub import HubSource, hub_offline_by_env, hub_reachable, load_hub_rows
from taps_ray.data.paths import ENV_VAR, data_root
from taps_ray.data.records import Record
from taps_ray.errors import TapsError

Kind = Literal["source", "benchmark"]
Resolved = Literal["local", "hub", "missing"]


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # registry name, also Record.source
    kind: Kind  # "source" = training data, "benchmark" = evaluation prompts
    local: str  # path relative to the data root
    hub: HubSource  # fallback when the local copy is absent
    parse: Callable[[dict, int], Record | None]  # (row, row index) -> Record, None = drop
    keeps_every_row: bool = True  # parse never returns None, so a line count is a record count
    about: str = ""  # one line for `data list`


_SPECS = (
    DatasetSpec(
        name="sharegpt",
        kind="source",
        local="sharegpt/sharegpt_v3_unfiltered_cleaned_split.first17671.jsonl.gz",
        hub=HubSource("Aeala/ShareGPT_Vicuna_unfiltered", "train"),
        parse=parsers.parse_sharegpt,
        keeps_every_row=False,  # empty or assistant-only conversations are dropped
        about="ShareGPT V3 chats (first 17,671 of 94,145)",
    ),
    DatasetSpec(
        name="mathinstruct",
        kind="source",
        local="mathinstruct_sources/math_cot.jsonl.gz",
        hub=HubSource("TIGER-Lab/MathInstruct", "train"),
        parse=parsers.parse_mathinstruct,
        about="MathInstruct-style CoT (offline stand-in: gsm8k/math/aqua/mathqa)",
    ),
    DatasetSpec(
        name="mt_bench",
        kind="benchmark",
        local="mt_bench/question.jsonl",
        hub=HubSource("HuggingFaceH4/mt_bench_prompts", "train"),
        parse=parsers.parse_mt_bench,
        about="MT-Bench, 80 two-turn questions",
    ),
    DatasetSpec(
        name="gsm8k",
        kind="benchmark",
        local="gsm8k/test.jsonl",
        hub=HubSource("openai/gsm8k", "test", "main"),
        parse=parsers.parse_gsm8k,
        about="GSM8K test split",
    ),
    DatasetSpec(
        name="math500",
        kind="benchmark",
        local="math500/test.jsonl",
        hub=HubSource("HuggingFaceH4/MATH-500", "test"),
        parse=parsers.parse_math500,
        about="MATH-500 (PRM800K test split of MATH)",
    ),
    DatasetSpec(
        name="svamp",
        kind="benchmark",
        local="svamp/SVAMP.json",
        hub=HubSource("ChilleD/SVAMP", "train+test"),  # the hub splits the 1,000 as 700 + 300
        parse=parsers.parse_svamp,
        about="SVAMP challenge set",
    ),
)


@dataclass(frozen=True)
class Resolution:
    name: str
    kind: Kind
    resolved: Resolved
    path: Path | None  # the local file (also when missing: where it was looked for)
    detail: str  # one human-readable line


def list_datasets() -> list[DatasetSpec]:
    return list(_SPECS)


def dataset_names(kind: Kind | None = None) -> list[str]:
    return [spec.name for spec in _SPECS if kind is None or spec.kind == kind]


def get_spec(name: str) -> DatasetSpec:
    """The spec for `name`; an unknown name lists the valid ones."""
    for spec in _SPECS:
        if spec.name == name:
            return spec
    raise TapsError(f"unknown dataset '{name}'; valid names: {', '.join(dataset_names())}")


def local_path(spec: DatasetSpec) -> Path | None:
    root = data_root()
    return None if root is None else root / spec.local


def resolve(name: str, *, hub: bool | None = None) -> Resolution:
    """Where `name` would be loaded from. `hub` skips the reachability probe when known."""
    spec = get_spec(name)
    path = local_path(spec)
    if path is not None and path.is_file():
        return Resolution(name, spec.kind, "local", path, f"local file {path}")
    reachable = hub_reachable() if hub is None else hub
    if reachable:
        return Resolution(name, spec.kind, "hub", path, f"hub dataset {spec.hub.repo}")
    return Resolution(name, spec.kind, "missing", path, _missing_message(spec, path))


def _missing_message(spec: DatasetSpec, path: Path | None) -> str:
    where = f"at {path}" if path is not None else f"(no data folder: {ENV_VAR} is unset)"
    why = "HF_HUB_OFFLINE is set" if hub_offline_by_env() else "the Hugging Face hub is unreachable"
    return (
        f"dataset '{spec.name}' not found locally {where} and {why}; set {ENV_VAR} to a folder "
        f"containing {spec.local} (see shared/data/README.md)"
    )


def load_records(name: str, limit: int | None = None) -> list[Record]:
    """Records of `name` in source order (first `limit` only if given): local first, then hub."""
    if limit is not None and limit < 0:
        raise TapsError(f"limit must be >= 0 (got {limit}); pass a positive number or no limit")
    spec = get_spec(name)
    res = resolve(name)
    if res.resolved == "missing":
        raise TapsError(res.detail)
    if res.resolved == "local" and res.path is not None:
        rows: Iterable[dict] = iter_rows(res.path)
    else:  # streaming, so a small limit does not download the whole dataset
        rows = load_hub_rows(spec.hub, streaming=limit is not None)
    return list(itertools.islice(_parse_rows(spec, rows, res.detail), limit))


def _parse_rows(spec: DatasetSpec, rows: Iterable[dict], where: str) -> Iterable[Record]:
    for index, row in enumerate(rows):
        try:
            record = spec.parse(dict(row), index)
        except (KeyError, TypeError, AttributeError) as err:
            raise TapsError(
                f"row {index} of dataset '{spec.name}' ({where}) is malformed ({err!r}); "
                "restore the file from its source"
            ) from None
        if record is not None:
            yield record


def count_rows(name: str) -> int:
    """Number of records `load_records(name)` returns; line-counted when no row is dropped."""
    spec = get_spec(name)
    res = resolve(name)
    path = res.path if res.resolved == "local" else None
    if path is not None and spec.keeps_every_row and is_json_lines(path):
        return count_lines(path)
    return len(load_records(name))
