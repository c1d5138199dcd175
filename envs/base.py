"""The environment protocol every marlctl environment implements, single and batched.

Arrays are agent-major and typed: observations ``obs_NO`` float32 ``[n_agents, obs_dim]``,
global state ``state_S`` float32 ``[state_dim]``, available actions ``avail_NA`` bool
``[n_agents, n_actions]``. The batched form adds a leading ``B`` axis and auto-resets
finished environments (the views of the finished episode's last step are kept in
``final_*``). See ../shared/DESIGN.md, "Environment protocol".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """What a learner, an exporter or a runner needs to know about an environment."""

    env_id: str
    """The canonical id string, e.g. ``smax:3m`` or ``matrix:qtran``."""
    n_agents: int
    obs_dim: int
    state_dim: int
    n_actions: int
    episode_limit: int
    """Steps after which an episode is truncated (``truncated=True``)."""
    fully_observable: bool = False
    """True where every agent's observation determines the global state (QTRAN's V_jt = 0 option)."""
    has_won: bool = False
    """True where ``won`` is meaningful (SC2, GRF, games with a goal)."""
    action_names: tuple[str, ...] = ()
    """Optional human names for actions (``len == n_actions`` when given)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "env_id": self.env_id,
            "n_agents": self.n_agents,
            "obs_dim": self.obs_dim,
            "state_dim": self.state_dim,
            "n_actions": self.n_actions,
            "episode_limit": self.episode_limit,
            "fully_observable": self.fully_observable,
            "has_won": self.has_won,
            "action_names": list(self.action_names),
        }


@dataclass
class TimeStep:
    """One environment's views after ``reset`` or ``step``."""

    obs: np.ndarray  # [N, O] float32
    state: np.ndarray  # [S] float32
    avail: np.ndarray  # [N, A] bool
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    """Always holds ``won`` (bool) and ``score`` (float, the env's own outcome measure)."""

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


@dataclass
class BatchStep:
    """``B`` environments' views after a batched ``reset`` or ``step``.

    ``obs``/``state``/``avail`` are what to act on next: for an environment whose
    episode just ended they already belong to the fresh (auto-reset) episode, and the
    ended episode's last views are in ``final_obs``/``final_state``/``final_avail``
    (equal to ``obs``/``state``/``avail`` where not done).
    """

    obs: np.ndarray  # [B, N, O] float32
    state: np.ndarray  # [B, S] float32
    avail: np.ndarray  # [B, N, A] bool
    reward: np.ndarray  # [B] float32
    terminated: np.ndarray  # [B] bool
    truncated: np.ndarray  # [B] bool
    won: np.ndarray  # [B] bool
    score: np.ndarray  # [B] float32
    final_obs: np.ndarray  # [B, N, O]
    final_state: np.ndarray  # [B, S]
    final_avail: np.ndarray  # [B, N, A]
    device_views: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    """The env's own arrays behind ``obs``/``state``/``avail`` where it computes them in a framework that can
    share memory through DLPack (SMAX: JAX, on the CPU or a GPU); None for NumPy envs. Never written to."""

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


@runtime_checkable
class Env(Protocol):
    """A single environment. ``step`` after the episode ended raises ``EpisodeOverError``;
    an action outside the avail mask raises ``InvalidActionError``."""

    spec: EnvSpec

    def reset(self, seed: int | None = None) -> TimeStep: ...

    def step(self, actions: np.ndarray) -> TimeStep: ...

    def close(self) -> None: ...


@runtime_checkable
class BatchedEnv(Protocol):
    """``num_envs`` environments stepped together, auto-resetting finished ones.

    ``reset(seed)`` seeds environment ``b`` deterministically from ``(seed, b)`` and every
    later auto-reset from the same stream, so a batched run is reproducible."""

    spec: EnvSpec
    num_envs: int

    def reset(self, seed: int | None = None) -> BatchStep: ...

    def step(self, actions: np.ndarray) -> BatchStep: ...  # actions [B, N] int

    def close(self) -> None: ...


@dataclass(frozen=True)
class EnvFamily:
    """One family of environment ids (``smax``, ``grf``, ``matrix``, ...), as the registry sees it.

    A family module ``marlctl.envs.<module>`` exposes ``FAMILY: EnvFamily`` and two factories::

        def make(scenario: str | None, options: dict[str, str]) -> Env
        def make_batched(scenario: str | None, options: dict[str, str], num_envs: int) -> BatchedEnv

    Both raise ``UnknownEnvError`` / ``EnvOptionError`` naming the valid choices, and
    ``BackendUnavailableError`` saying what to install when the backend is missing.
    """

    name: str
    """The id prefix before ``:`` (or the whole id for families without scenarios)."""
    summary: str
    """One line for ``marlctl envs list``."""
    scenarios: tuple[str, ...] = ()
    """Valid scenario names (empty when the family takes only options)."""
    options: tuple[tuple[str, str], ...] = ()
    """``(name, "meaning (default)")`` pairs of ``key=value`` options."""
    backend_module: str | None = None
    """Python module the backend needs (``jaxmarl``, ``gfootball``, ``smac``), or None."""
