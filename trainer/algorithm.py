"""The contract between the shared training loop (``trainer/run.py``) and each algorithm.

Every algorithm (value methods: QTRAN-base/alt, ReMIX, VDN, QMIX, OW/CW-QMIX; policy
gradient: MAPPO, TAD-PPO) is one object implementing ``Algorithm``. The run loop owns
everything else: run directory, resolved config, JSONL/TensorBoard logs, progress bar,
periodic greedy evaluation, atomic checkpoints, resume and the end-of-run summary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class IterationStats:
    """What one ``train_iteration`` did."""

    env_steps: int
    """Environment steps collected in this iteration (summed over batched envs; one step = one joint action)."""
    episodes: int = 0
    """Episodes finished in this iteration."""
    updates: int = 0
    """Gradient updates done in this iteration."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Scalars to log, grouped by prefix: ``train/return``, ``train/win_rate``, ``loss/td``, ``train/epsilon``..."""


@runtime_checkable
class Algorithm(Protocol):
    """One training algorithm, driven by the shared loop."""

    name: str

    def train_iteration(self) -> IterationStats:
        """Collect experience with the batched environments and do this iteration's updates."""
        ...

    def evaluate(self, n_episodes: int) -> dict[str, float]:
        """Greedy (exploration off) evaluation with decentralized execution.

        Returns at least ``eval/return`` and ``eval/win_rate`` (TAD-PPO also reports the
        joint TAD-PPO-T figures and their gap)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: networks, targets, optimizers, schedules, buffers (or a
        documented choice), RNG states. Must be loadable with ``torch.load(weights_only=True)``:
        tensors, numpy-free plain containers and primitives only."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def agent_bundle(self) -> dict[str, Any]:
        """The decentralized per-agent network to export, as stored under ``"agent"`` in a
        checkpoint: ``{"kind": "q" | "actor", "config": AgentNetConfig.to_dict(),
        "state_dict": AgentNet.state_dict()}`` (see ``agents/bundle.py``)."""
        ...
