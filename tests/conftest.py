"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and a busy 2-core box makes them 100x slower;
    Ray tests keep the driver's own torch work on one thread, like the workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
