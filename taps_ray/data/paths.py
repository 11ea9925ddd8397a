"""Where the offline data copies live: `TAPS_DATA_DIR`, else the nearest `shared/data` folder."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "TAPS_DATA_DIR"


def data_root() -> Path | None:
    """The local data folder, or None when there is none.

    An explicit `TAPS_DATA_DIR` wins even if it does not exist, so a typo shows up as
    "missing" instead of silently falling back to another folder.
    """
    explicit = os.environ.get(ENV_VAR, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    return next((path for path in _default_candidates() if path.is_dir()), None)


def _default_candidates() -> list[Path]:
    cwd = Path.cwd()
    repo = Path(__file__).resolve().parents[2]  # .../<repo>/taps_ray/data/paths.py -> <repo>
    return [base / "shared" / "data" for base in (cwd.parent, cwd, repo.parent)]
