"""The speed policy `taps-ray serve` and `taps-ray generate` decode with, and its cost profile.

Adaptive by default: trees cut to the tokens/s-optimal size and a guard that decodes plainly
while speculation measures slower (taps_ray.decoding.adaptive). Its first estimates come from
this machine's saved cost profile (`taps-ray calibrate`); without one it measures online.
A profile file the user named must be valid for this machine: else one TapsError.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from taps_ray.errors import TapsError

CALIBRATE_HINT = "`taps-ray calibrate` would give it a head start"


def machine_profile(target, path: str | Path = "", log: Callable[[str], None] = print):
    """The CostProfile for `target` here, or None (measure online).

    `path` given: that file, refused (TapsError) when missing, corrupt or of other hardware.
    Else this machine's default file when it exists; its absence (or a broken one) is logged
    in one line and decoding goes on without it.
    """
    from taps_ray.speed.profile import default_profile_path, load_profile, machine_key

    key = machine_key(target)
    if path:
        return load_profile(path, expect=key)
    default = default_profile_path(key)
    if not default.is_file():
        log(f"no cost profile for {key.target} on this machine ({default}); the adaptive "
            f"policy measures speeds online ({CALIBRATE_HINT})")
        return None
    try:
        return load_profile(default, expect=key)
    except TapsError as err:
        log(f"{err}; the adaptive policy measures speeds online instead")
        return None


def check_profile_file(path: str | Path) -> None:
    """Refuse a missing or corrupt profile file before anything starts (the hardware check
    needs the loaded target and happens where it is loaded)."""
    from taps_ray.speed.profile import load_profile

    load_profile(path)
