"""Shared machinery of the environments: action validation, seeding, and the single/batched wrappers.

Seeding contract (every family follows it, so a batched run is reproducible env by env):
a single environment's ``reset(seed, index=b)`` (``index`` keyword-only, default 0) starts
the episode that environment ``b`` of ``BatchedEnv.reset(seed)`` starts, and each later
auto-reset of ``b`` is what that single environment's next ``reset()`` (no seed: continue
the stream) gives. So ``reset(seed)`` of a single env replays batched environment 0.

The didactic games are written once, as a :class:`VectorGame` (NumPy over a leading ``B``
axis, randomness from a counter-based :class:`CounterRNG`); :class:`GameBatchedEnv` adds
validation, truncation and auto-reset, and :class:`GameEnv` is the same core at ``B = 1``.
:class:`LoopBatchedEnv` batches any single :class:`~marlctl.envs.base.Env` (GRF, SMAC).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
from marlctl.envs.base import BatchStep, Env, EnvSpec, TimeStep
from marlctl.envs.errors import EnvError, EpisodeOverError, InvalidActionError, UnknownEnvError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def check_seed(seed: object) -> int:
    """Return ``seed`` as an int, or raise EnvError: seeds are integers in ``[0, 2**63)``."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 2**63:
        raise EnvError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def env_seed(seed: int, index: int) -> int:
    """The stream seed of environment ``index`` of a run seeded ``seed`` (independent streams per index)."""
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
        raise EnvError(f"environment index must be an integer >= 0, got {index!r}")
    state = np.random.SeedSequence([check_seed(seed), int(index)]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def fresh_seed() -> int:
    """A seed from OS entropy, for ``reset(None)`` on a never-seeded environment."""
    return int(np.random.SeedSequence().generate_state(2, np.uint64)[0] >> np.uint64(1))


class CounterRNG:
    """Counter-based uniform random numbers, one independent stream per environment.

    Draw ``j`` of stream ``b`` is ``hash(key_b, counter_b + j)``: vectorized over ``B``,
    and a stream's numbers do not depend on which other streams are in the batch, so a
    batched game and the same game at ``B = 1`` draw identical numbers.
    """

    def __init__(self, num_envs: int) -> None:
        self.key_B = np.zeros(num_envs, dtype=np.uint64)
        self.counter_B = np.zeros(num_envs, dtype=np.uint64)

    def seed(self, seeds_B: Sequence[int]) -> None:
        self.key_B = _splitmix64(np.asarray(seeds_B, dtype=np.uint64) ^ np.uint64(0x5DEECE66D))
        self.counter_B = np.zeros(len(seeds_B), dtype=np.uint64)

    def uniform(self, n: int, where_B: np.ndarray | None = None) -> np.ndarray:
        """``[B, n]`` floats in ``[0, 1)``; only streams in ``where_B`` (default all) advance."""
        j = np.arange(n, dtype=np.uint64)
        with np.errstate(over="ignore"):
            z = _splitmix64(self.key_B[:, None] ^ _splitmix64(self.counter_B[:, None] + j))  # [B, n]
            if where_B is None:
                self.counter_B += np.uint64(n)
            else:
                self.counter_B[where_B] += np.uint64(n)
        return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)

    def integers(self, high: int | np.ndarray, n: int, where_B: np.ndarray | None = None) -> np.ndarray:
        """``[B, n]`` int64 uniform in ``[0, high)`` (``high`` scalar or broadcastable to ``[B, n]``)."""
        return np.floor(self.uniform(n, where_B) * high).astype(np.int64)


def validate_actions(actions: object, avail: np.ndarray, spec: EnvSpec) -> np.ndarray:
    """Check ``actions`` (``[N]`` or ``[B, N]``) against ``avail`` (``[..., N, A]``); return int64.

    Raises :class:`InvalidActionError` naming the agent, its action and its valid actions.
    """
    try:
        arr = np.asarray(actions)
    except (TypeError, ValueError) as exc:
        raise InvalidActionError(f"actions must be an integer array, got {actions!r}") from exc
    want = avail.shape[:-1]
    if arr.shape != want:
        raise InvalidActionError(
            f"actions must have shape {list(want)} (one action per agent), got shape {list(arr.shape)}"
        )
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            pass  # integral floats are accepted
        else:
            raise InvalidActionError(f"actions must be integers, got dtype {arr.dtype} ({arr.tolist()})")
    arr = arr.astype(np.int64)
    in_range = (arr >= 0) & (arr < spec.n_actions)
    ok = in_range & np.take_along_axis(avail, np.clip(arr, 0, spec.n_actions - 1)[..., None], -1)[..., 0]
    if not ok.all():
        idx = tuple(int(i) for i in np.argwhere(~ok)[0])
        agent = idx[-1]
        where = f"environment {idx[0]}, agent {agent}" if len(idx) == 2 else f"agent {agent}"
        valid = np.flatnonzero(avail[idx]).tolist()
        names = spec.action_names
        valid_txt = ", ".join(f"{a} ({names[a]})" if names else str(a) for a in valid)
        why = "out of range" if not in_range[idx] else "not available now"
        raise InvalidActionError(
            f"{spec.env_id}: {where} chose action {int(arr[idx])}, {why}; "
            f"valid actions for this agent now: [{valid_txt}] (n_actions={spec.n_actions})"
        )
    return arr


def random_actions(avail: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random available action per agent: ``[..., N, A]`` bool -> ``[..., N]`` int64."""
    noise = rng.random(avail.shape) + 1.0
    return np.argmax(np.where(avail, noise, 0.0), axis=-1).astype(np.int64)


class VectorGame(ABC):
    """A game over ``B`` environments at once, written with NumPy; no auto-reset, no validation.

    Subclasses set ``spec`` and implement the four methods; randomness comes from ``self.rng``.
    """

    spec: EnvSpec

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.rng = CounterRNG(num_envs)

    @abstractmethod
    def reset_where(self, where_B: np.ndarray) -> None:
        """Start new episodes in the environments where ``where_B`` [B] bool is True."""

    @abstractmethod
    def transition(self, actions_BN: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Apply valid actions; return ``reward`` [B] float32, ``terminated`` [B], ``won`` [B], ``score`` [B]."""

    @abstractmethod
    def observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fresh copies of ``obs`` [B, N, O] float32, ``state`` [B, S] float32, ``avail`` [B, N, A] bool."""

    @abstractmethod
    def render(self, b: int) -> np.ndarray:
        """Image ``[H, W, 3]`` uint8 of environment ``b``'s current state."""


class GameBatchedEnv:
    """A :class:`VectorGame` as a ``BatchedEnv``: validation, truncation, auto-reset, ``final_*`` views."""

    def __init__(self, game: VectorGame) -> None:
        self.game = game
        self.spec = game.spec
        self.num_envs = game.num_envs
        self._t_B = np.zeros(self.num_envs, dtype=np.int64)
        self._avail: np.ndarray | None = None
        self._seeded = False

    def reset(self, seed: int | None = None) -> BatchStep:
        if seed is not None or not self._seeded:
            base = fresh_seed() if seed is None else check_seed(seed)
            self.game.rng.seed([env_seed(base, b) for b in range(self.num_envs)])
            self._seeded = True
        every_B = np.ones(self.num_envs, dtype=bool)
        self.game.reset_where(every_B)
        self._t_B[:] = 0
        obs, state, avail = self.game.observe()
        self._avail = avail
        zeros_B = np.zeros(self.num_envs, dtype=bool)
        return BatchStep(
            obs, state, avail, np.zeros(self.num_envs, np.float32), zeros_B, zeros_B.copy(),
            zeros_B.copy(), np.zeros(self.num_envs, np.float32), obs.copy(), state.copy(), avail.copy(),
        )

    def step(self, actions: np.ndarray) -> BatchStep:
        if self._avail is None:
            raise EpisodeOverError(f"{self.spec.env_id}: call reset() before step()")
        actions_BN = validate_actions(actions, self._avail, self.spec)
        reward_B, terminated_B, won_B, score_B = self.game.transition(actions_BN)
        self._t_B += 1
        truncated_B = ~terminated_B & (self._t_B >= self.spec.episode_limit)
        done_B = terminated_B | truncated_B
        final_obs, final_state, final_avail = self.game.observe()
        obs, state, avail = final_obs.copy(), final_state.copy(), final_avail.copy()  # no aliasing of final_*
        if done_B.any():
            self.game.reset_where(done_B)
            self._t_B[done_B] = 0
            new_obs, new_state, new_avail = self.game.observe()
            obs = np.where(done_B[:, None, None], new_obs, final_obs)
            state = np.where(done_B[:, None], new_state, final_state)
            avail = np.where(done_B[:, None, None], new_avail, final_avail)
        self._avail = avail
        return BatchStep(
            obs, state, avail, reward_B.astype(np.float32), terminated_B, truncated_B, won_B,
            score_B.astype(np.float32), final_obs, final_state, final_avail,
        )

    def render(self, b: int = 0) -> np.ndarray:
        return self.game.render(b)

    def close(self) -> None:
        self._avail = None


class GameEnv:
    """A :class:`VectorGame` at ``B = 1`` as a single ``Env`` (same code path as the batched form)."""

    def __init__(self, game: VectorGame) -> None:
        if game.num_envs != 1:
            raise ValueError("GameEnv needs a game built with num_envs=1")
        self.game = game
        self.spec = game.spec
        self._t = 0
        self._done = True
        self._avail: np.ndarray | None = None  # [1, N, A]
        self._seeded = False

    def reset(self, seed: int | None = None, *, index: int = 0) -> TimeStep:
        """Start an episode; ``seed`` with ``index`` = batched environment ``index``'s stream, None continues."""
        if seed is not None or not self._seeded:
            self.game.rng.seed([env_seed(fresh_seed() if seed is None else seed, index)])
            self._seeded = True
        self.game.reset_where(np.ones(1, dtype=bool))
        self._t, self._done = 0, False
        obs, state, avail = self.game.observe()
        self._avail = avail
        return TimeStep(obs[0], state[0], avail[0], info={"won": False, "score": 0.0})

    def step(self, actions: np.ndarray) -> TimeStep:
        if self._done or self._avail is None:
            raise EpisodeOverError(
                f"{self.spec.env_id}: step() after the episode ended (or before reset()); call reset() first"
            )
        actions_N = validate_actions(actions, self._avail[0], self.spec)
        reward, terminated, won, score = self.game.transition(actions_N[None])
        self._t += 1
        term = bool(terminated[0])
        trunc = not term and self._t >= self.spec.episode_limit
        self._done = term or trunc
        obs, state, avail = self.game.observe()
        self._avail = avail
        info = {"won": bool(won[0]), "score": float(score[0])}
        return TimeStep(obs[0], state[0], avail[0], float(reward[0]), term, trunc, info)

    def render(self) -> np.ndarray:
        return self.game.render(0)

    def close(self) -> None:
        self._done = True


class LoopBatchedEnv:
    """``num_envs`` single environments stepped in a Python loop, with auto-reset and ``final_*`` views.

    For backends that cannot be vectorized in-process (GRF, SMAC). Follows the seeding contract,
    so the single environments' ``reset`` must accept ``index`` (keyword-only).
    """

    def __init__(self, make_single: Callable[[], Env], num_envs: int) -> None:
        if num_envs < 1:
            raise EnvError(f"num_envs must be >= 1, got {num_envs}")
        self.envs = [make_single() for _ in range(num_envs)]
        self.spec = self.envs[0].spec
        self.num_envs = num_envs
        self._seeded = False
        self._avail: np.ndarray | None = None  # [B, N, A] of the views to act on

    def reset(self, seed: int | None = None) -> BatchStep:
        if seed is None and not self._seeded:
            seed = fresh_seed()
        steps = [
            env.reset(seed, index=b) if seed is not None else env.reset()  # type: ignore[call-arg]
            for b, env in enumerate(self.envs)
        ]
        self._seeded = True
        out = self._stack(steps, steps)
        self._avail = out.avail
        return out

    def step(self, actions: np.ndarray) -> BatchStep:
        if self._avail is None:
            raise EpisodeOverError(f"{self.spec.env_id}: call reset() before step()")
        # Validate the whole batch first, so a bad action steps no environment.
        actions_BN = validate_actions(actions, self._avail, self.spec)
        finals = [env.step(a) for env, a in zip(self.envs, actions_BN, strict=True)]
        nexts = [env.reset() if ts.done else ts for env, ts in zip(self.envs, finals, strict=True)]
        out = self._stack(nexts, finals)
        self._avail = out.avail
        return out

    @staticmethod
    def _stack(nexts: list[TimeStep], finals: list[TimeStep]) -> BatchStep:
        return BatchStep(
            obs=np.stack([t.obs for t in nexts]).astype(np.float32),
            state=np.stack([t.state for t in nexts]).astype(np.float32),
            avail=np.stack([t.avail for t in nexts]).astype(bool),
            reward=np.array([t.reward for t in finals], np.float32),
            terminated=np.array([t.terminated for t in finals], bool),
            truncated=np.array([t.truncated for t in finals], bool),
            won=np.array([bool(t.info.get("won", False)) for t in finals], bool),
            score=np.array([float(t.info.get("score", 0.0)) for t in finals], np.float32),
            final_obs=np.stack([t.obs for t in finals]).astype(np.float32),
            final_state=np.stack([t.state for t in finals]).astype(np.float32),
            final_avail=np.stack([t.avail for t in finals]).astype(bool),
        )

    def render(self, b: int = 0) -> np.ndarray:
        return self.envs[b].render()  # type: ignore[attr-defined]

    def close(self) -> None:
        self._avail = None
        for env in self.envs:
            env.close()


def options_game_factories(
    family: str, config_cls: type, game_cls: Callable[..., VectorGame], example: str
) -> tuple[Callable[[str | None, dict[str, str]], Env], Callable[[str | None, dict[str, str], int], GameBatchedEnv]]:
    """``make`` and ``make_batched`` of a game family that takes options but no scenario
    (``hallway``, ``predator_prey:...``, ``gaussian_squeeze:...``): options are parsed into
    ``config_cls`` and the game is built as ``game_cls(env_id, config, num_envs)``."""

    def configure(scenario: str | None, options: dict[str, str]) -> tuple[str, object]:
        from marlctl.envs.registry import config_from_options, format_env_id

        if scenario is not None:
            raise UnknownEnvError(f"{family} takes no scenario, got {scenario!r}; use e.g. {example!r}")
        return format_env_id(family, None, options), config_from_options(config_cls, family, options)

    def make(scenario: str | None, options: dict[str, str]) -> Env:
        env_id, cfg = configure(scenario, options)
        return GameEnv(game_cls(env_id, cfg, 1))

    def make_batched(scenario: str | None, options: dict[str, str], num_envs: int) -> GameBatchedEnv:
        env_id, cfg = configure(scenario, options)
        return GameBatchedEnv(game_cls(env_id, cfg, num_envs))

    return make, make_batched
