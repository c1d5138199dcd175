"""Fixtures shared by several test modules."""
from __future__ import annotations

import pytest


@pytest.fixture
def one_thread():
    """Tiny networks: one intra-op torch thread is fastest and keeps the shared CPUs free."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with ``slow`` tests first, each module's tests kept together and in order: with parallel
    workers (``pytest -n N --dist loadfile``, as scripts/test.sh runs) the long modules start at once instead
    of leaving one worker busy alone at the end (scripts/test.sh passes ``--no-loadscope-reorder``, which keeps
    this order instead of xdist's largest-module-first)."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow") and item.module}
    items.sort(key=lambda item: (item.module.__name__ if item.module else "") not in slow)
