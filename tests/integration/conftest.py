from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def default_target():
    """The embedded SmolLM2-135M-Instruct (converted once into TAPS_CACHE_DIR)."""
    from taps_ray.models.target import load_target

    return load_target()
