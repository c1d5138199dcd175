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


# The long modules, longest first by `bash scripts/test.sh --durations=30` (2 cores, Dec 2026: 270, 260, 90,
# 45 ... s), except test_distributed (130 s), first of all so that its Ray head starts in a fresh worker process
# (tests/test_distributed.py says why). Only the order reads this list: a stale one costs wall time, nothing else.
FIRST = ["test_distributed", "test_tad_ppo", "test_qtran_random_games", "test_e2e", "test_trainer_core", "test_smax",
         "test_checkpoints", "test_qtran_matrix", "test_resume", "test_packaging"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first, each module's tests kept together and in order. With parallel workers
    (``pytest -n N --dist loadfile``, as scripts/test.sh runs, with ``--no-loadscope-reorder`` so that xdist
    keeps this order instead of its largest-module-first by test count), a worker is handed its next module as
    soon as two tests of its current one are left: with the long modules anywhere but first, one worker ended
    up running both 260 s modules back to back while the other sat idle for the last two minutes."""

    def key(item: pytest.Item) -> int:
        name = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        return FIRST.index(name) if name in FIRST else len(FIRST)

    items.sort(key=key)  # stable: the rest keep the collection order
