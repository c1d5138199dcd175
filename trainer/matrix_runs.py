"""Value methods trained on one-step payoff matrices, many games at a time: did the greedy agents reach the optimum?

QTRAN's random-matrix protocol (appendix, Table 6: every entry of a 3x3 payoff U[0, 1), "the same
settings as the previous matrix game") and its two-peak game (``matrix:qtran21``) are checked by
training one value method per (method, game) cell with the matrix family's packaged defaults at a
stated budget, through the algorithm's own training iterations (rollout, replay, updates, target
updates), then reading each agent's greedy action (``matrix_tables``) and playing one greedy
decentralized evaluation. Cells run in a pool of worker processes (one torch thread each); the test
and ``bench/paper_qtran.py`` share this module.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np


def random_payoff(game: int, seed: int = 0, shape: tuple[int, ...] = (3, 3)) -> np.ndarray:
    """Game ``game`` of the random family ``seed``: every entry U[0, 1) (QTRAN Table 6's protocol)."""
    return np.random.default_rng([seed, game]).random(shape)


def top_gap(payoff: np.ndarray) -> float:
    """How far the best joint action's payoff is above the second best."""
    top = np.sort(payoff.ravel())[::-1]
    return float(top[0] - top[1])


@dataclass(frozen=True)
class Cell:
    """One training run: ``algo`` on a payoff tensor (``payoff``) or a named env id (``env_id``)."""

    algo: str
    name: str
    """Label of the game in reports (``random_7``, ``qtran21``)."""
    steps: int
    seed: int = 0
    payoff: tuple | None = None
    """Nested tuples of the payoff tensor, or None with ``env_id``."""
    env_id: str = ""
    overrides: tuple[str, ...] = ()


@dataclass
class CellResult:
    algo: str
    name: str
    seed: int
    steps: int
    greedy: list[int]
    optimum: list[int]
    reached: bool
    """The agents' greedy joint action is the payoff's argmax."""
    greedy_payoff: float
    best_payoff: float
    top_gap: float
    eval_return: float
    max_abs_err: float
    """max |Q_jt - payoff| (QTRAN) or |Q_tot - payoff| over all joint actions."""
    updates: int
    wall_s: float
    cpu_s: float
    """CPU time of the cell's process (= its wall time on an idle core)."""
    overrides: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _matrix_payoff(env_id: str) -> np.ndarray:
    from marlctl.envs.matrix import SCENARIOS

    scenario = env_id.split(":", 1)[1]
    payoffs = SCENARIOS[scenario][0]
    if payoffs.shape[0] != 1:
        raise ValueError(f"{env_id} stacks {payoffs.shape[0]} matrices; one single-state game is needed")
    return payoffs[0]


@contextmanager
def cell_algorithm(cell: Cell) -> Iterator[tuple[Any, np.ndarray]]:
    """The cell's algorithm, built as ``marlctl train`` builds it (seeded, CPU, one torch thread), and its payoff.

    A payoff cell's game lives in a temporary ``.npy`` file for as long as the context is open."""
    import torch
    from marlctl.envs import env_spec
    from marlctl.trainer.config import load_config
    from marlctl.trainer.registry import algorithm_spec
    from marlctl.trainer.run import seed_everything

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="marlctl_matrix_") as tmp:
        if cell.payoff is not None:
            payoff = np.array(cell.payoff, dtype=np.float64)
            path = Path(tmp) / "payoff.npy"
            np.save(path, payoff)
            env_id = f"matrix:file={path}"
        else:
            env_id, payoff = cell.env_id, _matrix_payoff(cell.env_id)
        cfg = load_config(cell.algo, env_id, overrides=["run.progress=false", *cell.overrides],
                          steps=cell.steps, seed=cell.seed, device="cpu")
        seed_everything(cell.seed)
        alg = algorithm_spec(cell.algo).build(cfg, env_spec(env_id), torch.device("cpu"))
        try:
            yield alg, payoff
        finally:
            alg.close()


def train_cell(cell: Cell) -> CellResult:
    """Train one cell in this process and read its greedy joint action (single torch thread)."""
    from marlctl.trainer.learners.matrix_tables import matrix_tables

    t0, c0 = time.perf_counter(), time.process_time()
    with cell_algorithm(cell) as (alg, payoff):
        while alg.env_steps < cell.steps:
            alg.train_iteration()
        tables = matrix_tables(alg.learner, alg.buffer.gather(np.arange(1)))
        eval_return = alg.evaluate(8)["eval/return"]
    greedy = tuple(int(a) for a in tables.greedy)
    optimum = tuple(int(a) for a in np.unravel_index(int(payoff.argmax()), payoff.shape))
    return CellResult(
        algo=cell.algo, name=cell.name, seed=cell.seed, steps=cell.steps, greedy=list(greedy), optimum=list(optimum),
        reached=greedy == optimum, greedy_payoff=float(payoff[greedy]), best_payoff=float(payoff.max()),
        top_gap=top_gap(payoff), eval_return=float(eval_return),
        max_abs_err=float(np.abs(tables.q_joint - payoff).max()), updates=int(alg.learner.updates),
        wall_s=round(time.perf_counter() - t0, 2), cpu_s=round(time.process_time() - c0, 2), overrides=list(cell.overrides),
    )


def run_cells(cells: Iterable[Cell], workers: int = 2,
              on_result: Callable[[CellResult], None] | None = None) -> list[CellResult]:
    """Train every cell, ``workers`` at a time in spawned processes (1 = in this process); results in cell order.

    ``on_result`` is called in this process as each cell finishes (e.g. to save progress)."""
    cells = list(cells)
    if workers <= 1:
        out = []
        for c in cells:
            out.append(train_cell(c))
            if on_result:
                on_result(out[-1])
        return out
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # inherited by the spawned workers before torch loads there
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(train_cell, c) for c in cells]
            results = []
            for f in futures:
                results.append(f.result())
                if on_result:
                    on_result(results[-1])
            return results
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def payoff_tuple(payoff: np.ndarray) -> tuple:
    """A payoff tensor as nested tuples (hashable, picklable, exact float64 values)."""
    return tuple(payoff_tuple(p) for p in payoff) if payoff.ndim > 1 else tuple(float(x) for x in payoff)
