"""Result rows: the one schema every runner writes (DESIGN.md §3), one Parquet file per writer.

Files are never appended in place: each writer (run, worker, trial) writes its own file under a
run folder, via a temp name and a rename, so many nodes can write to one storage path at once.
`storage` may be a local folder or any URI pyarrow understands (s3://, gs://, ...).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from taps_ray.errors import TapsError


@dataclass
class ResultRow:
    run_id: str
    target: str
    drafters: list[str]  # drafter names, <data>-<method>
    method: str  # eagle2 | hass | none
    strategy: str
    budget_mode: str  # "" | sum | matched
    benchmark: str
    prompt_id: str
    turn: int
    temperature: float
    seed: int
    new_tokens: int
    steps: int
    tau: float
    wall_s: float
    tokens_per_s: float  # measured decoding speed: live rows only, NaN in replay rows (below)
    verify_tokens_per_step: float
    accepted_by_depth: list[float]
    route_counts: str  # json {drafter name: steps routed to it}
    total_tokens: int
    depth: int
    top_k: int
    mode: str = "live"  # live decoding, or replay (T = 0 without decoding)
    # tau / step seconds from a machine profile (taps_ray.speed), never measured; replay rows
    predicted_tokens_per_s: float = math.nan
    profile: str = ""  # the profile's slug behind predicted_tokens_per_s; "" when none
    node: str = field(default_factory=lambda: os.uname().nodename)
    git_rev: str = field(default_factory=lambda: git_rev())
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        # A replay row's wall time is drafter work over a cached continuation, not decoding:
        # it must never read as a decoding speed (DESIGN.md §3).
        if self.mode == "replay":
            self.tokens_per_s = math.nan


COLUMNS = [f.name for f in fields(ResultRow)]


def git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def route_counts_json(routes: list[int | None], names: list[str]) -> str:
    counts: dict[str, int] = {}
    for r in routes:
        key = "merged" if r is None else names[r]
        counts[key] = counts.get(key, 0) + 1
    return json.dumps(counts, sort_keys=True)


def write_rows(rows: list[ResultRow], storage: str, run_id: str, writer: str = "",
               exact_name: bool = False) -> str:
    """Write rows to `<storage>/<run_id>/<writer>-<uuid>.parquet`; returns the file path.

    `exact_name` drops the uuid: a retried work unit then replaces its own file instead of
    adding a second one (no duplicated rows after a worker dies and its unit reruns).
    """
    if not rows:
        raise ValueError("write_rows needs at least one row")
    table = pa.Table.from_pylist([asdict(r) for r in rows])
    return write_table(table, storage, run_id, writer or "rows", exact_name)


def write_table(table: pa.Table, storage: str, run_id: str, writer: str,
                exact_name: bool = False, metadata: dict[str, str] | None = None) -> str:
    """Atomically write one Parquet file under `<storage>/<run_id>/` (temp name + rename);
    `metadata` goes into the file's schema (read back by `result_metadata`)."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    filesystem, root = pafs.FileSystem.from_uri(_as_uri(storage))
    folder = f"{root.rstrip('/')}/{run_id}"
    filesystem.create_dir(folder, recursive=True)
    name = f"{writer}.parquet" if exact_name else f"{writer}-{uuid.uuid4().hex[:8]}.parquet"
    tmp, final = f"{folder}/.{name}.tmp", f"{folder}/{name}"
    pq.write_table(table, tmp, filesystem=filesystem)
    filesystem.move(tmp, final)
    return final


def _exact_file(storage: str, run_id: str, writer: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of the exact-named result file `writer` of `run_id`."""
    filesystem, root = pafs.FileSystem.from_uri(_as_uri(storage))
    return filesystem, f"{root.rstrip('/')}/{run_id}/{writer}.parquet"


def result_exists(storage: str, run_id: str, writer: str) -> bool:
    """Whether an exact-named result file is already written (a finished work unit)."""
    filesystem, path = _exact_file(storage, run_id, writer)
    return filesystem.get_file_info(path).type == pafs.FileType.File


def result_metadata(storage: str, run_id: str, writer: str) -> dict[str, str]:
    """The schema metadata of an exact-named result file (empty for files written without)."""
    filesystem, path = _exact_file(storage, run_id, writer)
    meta = pq.read_schema(path, filesystem=filesystem).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW")}


def read_rows(paths: list[str]):
    """All result rows under the given files/folders (local or URIs) as one pandas DataFrame."""
    import pandas as pd

    frames = []
    for path in paths:
        filesystem, root = pafs.FileSystem.from_uri(_as_uri(path))
        for file in _parquet_files(filesystem, root):
            if Path(file).name.startswith("diagnostics-"):
                continue  # per-token diagnostics: another table (see read_diagnostics)
            frames.append(pq.read_table(file, filesystem=filesystem).to_pandas())
    if not frames:
        raise TapsError(f"no result files (*.parquet) found under {', '.join(paths)}")
    return pd.concat(frames, ignore_index=True)


def _parquet_files(filesystem, root: str) -> list[str]:
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise TapsError(f"result path '{root}' does not exist")
    if info.type == pafs.FileType.File:
        return [root]
    selector = pafs.FileSelector(root, recursive=True)
    return sorted(i.path for i in filesystem.get_file_info(selector)
                  if i.path.endswith(".parquet") and not Path(i.path).name.startswith("."))


def _as_uri(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())
