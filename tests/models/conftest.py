"""Model tests use tiny shapes: one intra-op thread is as fast, and immune to a busy machine's thread contention."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
