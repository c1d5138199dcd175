"""SMAX family: StarCraft micro scenarios in JAX (jaxmarl 0.2.0) behind the marlctl Env protocol.

Ids ``smax:<map>[,smac=1][,limit=N][,enemy=closest|random]``. The enemy team is jaxmarl's scripted
``HeuristicEnemySMAX``; the agents are the allied units. Per-agent observations are jaxmarl's
``unit_list`` features, the global state is jaxmarl's ``world_state`` and the avail mask is
jaxmarl's (a dead unit may only ``stop``). The reward is jaxmarl's team reward: each enemy's health
removed as a fraction of its type's full health, averaged over the enemies, plus 1 for a won battle,
so a won episode sums to exactly 2 on every map. The episode limit is jaxmarl's 100 steps.

``smac=1`` makes both SMAC's (``smac.env.StarCraft2Env`` with its defaults): the map's episode limit
from SMAC's map registry (``SMAC_LIMITS``; SMACv2's 400 for ``smacv2_*``), and SMAC's dense reward
recomputed from the same unit healths: absolute enemy health removed (SMAX's health of a Protoss unit
is SMAC's health + shield) + 10 per enemy killed + 200 for a win, enemies' damage to allies not
subtracted (``reward_only_positive``), scaled by ``20 / max_reward`` with ``max_reward = 10 * n_enemies
+ 200 + the enemies' full health`` (``reward_scale_rate = 20``): a won episode sums to exactly 20, the
win being ``200 / max_reward`` of it (3m: 11.0 of 20). An explicit ``limit=N`` still wins over SMAC's.
What stays SMAX, not SMAC: the dynamics (SMAX's own movement, attack and collision model with
simplified unit stats, no terrain or pathing, jaxmarl's heuristic enemy in place of SC2's built-in AI
and its start positions), the step (8 SMAX world ticks per agent step; SMAC's 8 game loops of SC2 are
not the same time), the observation and state features, and draws: a step that kills the last units
of both teams ends the episode with no win bonus, which SC2's sequential resolution almost never gives.

Randomness is one JAX key stream per environment: environment ``b`` of a run seeded ``seed``
starts from ``fold_in(PRNGKey(seed), b)``; every step splits the stream into (next stream,
step key, reset key), and an auto-reset (batched) or ``reset(None)`` (single) starts the next
episode from that step's reset key. So a single env reset with ``(seed, index=b)`` replays
batched environment ``b`` episode after episode, and the same seed always gives the same episode.

The batched env steps all ``B`` environments in ONE jitted, vmapped call (step, auto-reset of
finished ones, views of both) and hands the results to NumPy without copies (``np.asarray``
of a CPU jax array is a view). The jax arrays behind ``obs``/``state``/``avail`` ride along as
``BatchStep.device_views``: the trainer hands them to PyTorch with ``torch.from_dlpack`` where JAX and
PyTorch share a device (no copy; on a GPU, no host-to-device upload). With a GPU JAX, the NumPy views
are device-to-host copies (the replay buffer and the avail-mask check live on the host), and JAX is
kept from preallocating the GPU's memory (``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless set), which
PyTorch needs in the same process.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from marlctl.envs.base import BatchStep, EnvFamily, EnvSpec, TimeStep
from marlctl.envs.errors import (
    BackendUnavailableError,
    EnvOptionError,
    EpisodeOverError,
    UnknownEnvError,
)
from marlctl.envs.vector import validate_actions

# Every scenario jaxmarl 0.2.0 registers in jaxmarl.environments.smax.smax_env.MAP_NAME_TO_SCENARIO.
MAPS: tuple[str, ...] = (
    "3m",
    "2s3z",
    "25m",
    "3s5z",
    "8m",
    "5m_vs_6m",
    "10m_vs_11m",
    "27m_vs_30m",
    "3s5z_vs_3s6z",
    "3s_vs_5z",
    "6h_vs_8z",
    "smacv2_5_units",
    "smacv2_10_units",
    "smacv2_20_units",
)
DEFAULT_EPISODE_LIMIT = 100  # jaxmarl's SMAX default ``max_steps``, used by the JaxMARL SMAX baselines
# SMAC's per-map episode limits (smac/env/starcraft2/maps/smac_maps.py, ``limit``); the smacv2_* maps take
# SMACv2's limit of its generated maps (10gen_protoss/terran/zerg: 400).
SMAC_LIMITS: dict[str, int] = {
    "3m": 60, "8m": 120, "25m": 150, "5m_vs_6m": 70, "10m_vs_11m": 150, "27m_vs_30m": 180, "2s3z": 120,
    "3s5z": 150, "3s5z_vs_3s6z": 170, "3s_vs_5z": 250, "6h_vs_8z": 150,
    "smacv2_5_units": 400, "smacv2_10_units": 400, "smacv2_20_units": 400,
}
# SMAC's reward settings (StarCraft2Env defaults): reward_death_value, reward_win, reward_scale_rate.
SMAC_DEATH_VALUE, SMAC_WIN, SMAC_REWARD_MAX = 10.0, 200.0, 20.0
SMAC_SWITCH_VALUES = ("0", "1")
ENEMY_MODES = ("closest", "random")
MAX_SEED = 2**32 - 1

FAMILY = EnvFamily(
    name="smax",
    summary="StarCraft II micro in JAX (jaxmarl SMAX, heuristic enemy); no game binary needed",
    scenarios=MAPS,
    options=(
        ("smac", "1: SMAC's per-map episode limit and SMAC's reward scaled to a max of 20; 0: jaxmarl's (0)"),
        ("limit", f"episode limit in steps ({DEFAULT_EPISODE_LIMIT}, jaxmarl's default; with smac=1, SMAC's)"),
        ("enemy", "heuristic enemy's target choice: closest | random (closest)"),
    ),
    backend_module="jaxmarl",
)

# Movement actions of SMAX's discrete action space; attack actions follow, one per enemy.
MOVE_ACTION_NAMES = ("move_north", "move_east", "move_south", "move_west", "stop")


@dataclass(frozen=True)
class SmaxConfig:
    """One SMAX environment: which map and how the episode and the enemy behave."""

    map_name: str
    """A jaxmarl SMAX scenario name (one of ``MAPS``)."""
    episode_limit: int = DEFAULT_EPISODE_LIMIT
    """Steps after which the episode is truncated (jaxmarl ``max_steps``)."""
    enemy_attack_mode: str = "closest"
    """How the heuristic enemy picks targets: ``closest`` or ``random``."""
    smac_reward: bool = False
    """SMAC's reward (damage + 10 per kill + 200 per win, scaled to a max of 20) instead of jaxmarl's."""

    @property
    def env_id(self) -> str:
        parts = [f"smax:{self.map_name}"]
        if self.smac_reward:
            parts.append("smac=1")
        if self.episode_limit != (SMAC_LIMITS[self.map_name] if self.smac_reward else DEFAULT_EPISODE_LIMIT):
            parts.append(f"limit={self.episode_limit}")
        if self.enemy_attack_mode != "closest":
            parts.append(f"enemy={self.enemy_attack_mode}")
        return ",".join(parts)


def parse_config(scenario: str | None, options: dict[str, str]) -> SmaxConfig:
    """Validate a scenario and options into a config; errors name what is valid."""
    if not scenario:
        raise UnknownEnvError(f"smax needs a map, e.g. smax:3m; valid maps: {', '.join(MAPS)}")
    if scenario not in MAPS:
        raise UnknownEnvError(f"unknown SMAX map {scenario!r}; valid maps: {', '.join(MAPS)}")
    valid = {name for name, _ in FAMILY.options}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise EnvOptionError(f"unknown smax option(s) {unknown}; valid options: {sorted(valid)}")
    smac = options.get("smac", "0")
    if smac not in SMAC_SWITCH_VALUES:
        raise EnvOptionError(f"smax option smac={smac!r}; valid values: 1 (SMAC's episode limit and reward) or 0 "
                             "(jaxmarl's)")
    limit = SMAC_LIMITS[scenario] if smac == "1" else DEFAULT_EPISODE_LIMIT
    if "limit" in options:
        try:
            limit = int(options["limit"])
        except ValueError:
            raise EnvOptionError(f"smax option limit={options['limit']!r} is not an integer >= 1") from None
        if limit < 1:
            raise EnvOptionError(f"smax option limit={limit} must be an integer >= 1")
    enemy = options.get("enemy", "closest")
    if enemy not in ENEMY_MODES:
        raise EnvOptionError(f"smax option enemy={enemy!r}; valid values: {', '.join(ENEMY_MODES)}")
    return SmaxConfig(map_name=scenario, episode_limit=limit, enemy_attack_mode=enemy, smac_reward=smac == "1")


def check_seed(seed: int) -> int:
    """A seed must be an integer in [0, 2**32)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= int(seed) <= MAX_SEED:
        raise EnvOptionError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return int(seed)


@contextlib.contextmanager
def _quiet_jaxmarl_import() -> Iterator[None]:
    """Swallow jaxmarl's import-time prints and undo its reset of sys.stdout/stderr to the originals.

    jaxmarl 0.2.0 prints two lines on import and, around its brax import, sets ``sys.stdout``
    and ``sys.stderr`` to ``sys.__stdout__``/``sys.__stderr__`` (which breaks redirections such
    as pytest's capture); both streams, and their ``__`` originals, are put back afterwards.
    """
    saved = sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__
    sink = io.StringIO()
    sys.stdout = sys.__stdout__ = sink
    try:
        yield
    finally:
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__ = saved


def _import_jax() -> tuple[Any, Any, Any, Any]:
    """Import JAX and jaxmarl's SMAX (quietly), or say what to install."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # PyTorch shares the GPU in this process
    try:
        import jax
        import jax.numpy as jnp

        with _quiet_jaxmarl_import():
            from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario
    except ImportError as exc:
        raise BackendUnavailableError(
            f"smax needs JAX and jaxmarl ({exc}); install them with: pip install 'marlctl[train]' "
            "(jax and jaxmarl==0.2.0)"
        ) from None
    return jax, jnp, HeuristicEnemySMAX, map_name_to_scenario


_CORES: dict[SmaxConfig, SmaxCore] = {}


def shared_core(config: SmaxConfig) -> SmaxCore:
    """The process-wide ``SmaxCore`` of a configuration: every env of the same map shares its compiled
    functions, so a second env (an eval env, a runner slot, a replay) does not compile again."""
    core = _CORES.get(config)
    if core is None:
        core = _CORES[config] = SmaxCore(config)
    return core


def _enable_compilation_cache(jax: Any) -> None:
    """Keep XLA executables on disk across processes (a SMAX map compiles in seconds to tens of seconds;
    tests, runner slots and CLI commands would otherwise pay it every time). ``MARLCTL_JAX_CACHE`` sets
    the directory; an empty value turns the cache off."""
    path = os.environ.get("MARLCTL_JAX_CACHE", str(Path.home() / ".cache" / "marlctl" / "jax"))
    if not path or jax.config.jax_compilation_cache_dir:
        return
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except (OSError, AttributeError):  # read-only home or a JAX without the option: just compile
        pass


class SmaxCore:
    """The jitted pure functions of one SMAX configuration, shared by the single and batched env.

    Each form compiles ONE function that both steps and resets (an XLA compile of a SMAX map
    takes seconds; compiling the reset once instead of in several functions halves the wait):
    ``single(carry, actions, stream, reset_key, do_reset)`` and
    ``batched(carry_B, actions_BN, force_B, streams_B, reset_keys_B)``.
    """

    def __init__(self, config: SmaxConfig) -> None:
        jax, jnp, heuristic_enemy_smax, map_name_to_scenario = _import_jax()
        _enable_compilation_cache(jax)
        self.config = config
        self.jax = jax
        self.env = heuristic_enemy_smax(
            scenario=map_name_to_scenario(config.map_name),
            max_steps=config.episode_limit,
            attack_mode=config.enemy_attack_mode,
        )
        env = self.env
        agents = list(env.agents)
        n_allies = env.num_allies
        n_enemies = env.num_enemies
        limit = config.episode_limit
        self.n_agents = n_allies
        self.n_enemies = n_enemies
        self.n_actions = env.num_ally_actions
        self.obs_dim = int(env.obs_size)
        self.state_dim = int(env.state_size)

        def views(obs: dict[str, Any], avail: dict[str, Any]) -> tuple[Any, Any, Any]:
            obs_NO = jnp.stack([obs[a] for a in agents]).astype(jnp.float32)
            state_S = obs["world_state"].astype(jnp.float32)
            avail_NA = jnp.stack([avail[a] for a in agents]).astype(jnp.bool_)
            return obs_NO, state_S, avail_NA

        def reset_from_key(k_reset: Any) -> tuple[Any, tuple[Any, Any, Any]]:
            obs, env_state = env.reset(k_reset)
            return env_state, views(obs, env.get_avail_actions(env_state))

        unit_type_health = jnp.asarray(env.unit_type_health)

        def smac_reward(before: Any, after: Any, won: Any) -> Any:
            """SMAC's scaled dense reward of one step from the inner SMAX states before and after it."""
            e = slice(n_allies, None)
            damage = jnp.sum(jnp.maximum(before.unit_health[e] - after.unit_health[e], 0.0))
            kills = jnp.sum(before.unit_alive[e] & ~after.unit_alive[e])
            max_reward = SMAC_DEATH_VALUE * n_enemies + SMAC_WIN + jnp.sum(unit_type_health[after.unit_types[e]])
            raw = damage + SMAC_DEATH_VALUE * kills + SMAC_WIN * won
            return (raw * (SMAC_REWARD_MAX / max_reward)).astype(jnp.float32)

        def step(carry: tuple[Any, Any], actions_N: Any) -> tuple[Any, ...]:
            env_state, stream = carry
            inner_before = env_state.state
            stream, k_step, k_reset = jax.random.split(stream, 3)
            obs, env_state, rewards, _, _ = env.step_env(
                k_step, env_state, {a: actions_N[i] for i, a in enumerate(agents)}
            )
            alive = env_state.state.unit_alive
            allies_alive, enemies_alive = alive[:n_allies].any(), alive[n_allies:].any()
            won = ~enemies_alive & allies_alive
            terminated = ~enemies_alive | ~allies_alive
            truncated = (env_state.state.step >= limit) & ~terminated
            score = (n_enemies - alive[n_allies:].sum()).astype(jnp.float32) / n_enemies  # enemies killed
            if config.smac_reward:
                reward = smac_reward(inner_before, env_state.state, won)
            else:
                reward = rewards[agents[0]].astype(jnp.float32)
            v = views(obs, env.get_avail_actions(env_state))
            return (env_state, stream), k_reset, v, reward, terminated, truncated, won, score

        def single(carry: Any, actions_N: Any, stream: Any, reset_key: Any, do_reset: Any) -> tuple[Any, ...]:
            def reset_branch() -> tuple[Any, ...]:
                env_state, v = reset_from_key(reset_key)
                false = jnp.array(False)
                return (env_state, stream), reset_key, v, jnp.float32(0.0), false, false, false, jnp.float32(0.0)

            # Unbatched, lax.cond runs only the chosen branch.
            return jax.lax.cond(do_reset, reset_branch, lambda: step(carry, actions_N))

        def batched_one(carry: Any, actions_N: Any, force: Any, stream: Any, reset_key: Any) -> tuple[Any, ...]:
            (env_state, next_stream), k_reset, final_v, reward, term, trunc, won, score = step(carry, actions_N)
            done = (term | trunc) & ~force
            fresh_state, fresh_v = reset_from_key(jnp.where(force, reset_key, k_reset))
            renew = done | force
            env_state = jax.tree.map(lambda f, s: jnp.where(renew, f, s), fresh_state, env_state)
            next_stream = jnp.where(force, stream, next_stream)
            v = tuple(jnp.where(renew, f, s) for f, s in zip(fresh_v, final_v, strict=True))
            final_v = tuple(jnp.where(force, f, s) for f, s in zip(fresh_v, final_v, strict=True))
            zero = jnp.float32(0.0)
            stats = (jnp.where(force, zero, reward), term & ~force, trunc & ~force, won & ~force,
                     jnp.where(force, zero, score))
            return (env_state, next_stream), v, final_v, *stats

        def seed_streams(seed: Any, indices: Any) -> tuple[Any, Any]:
            """Per env (seed, b): the stream after the first split, and the first episode's reset key."""
            streams = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.PRNGKey(seed), indices)
            split = jax.vmap(jax.random.split)(streams)
            return split[:, 0], split[:, 1]

        def split_streams(streams: Any) -> tuple[Any, Any]:
            split = jax.vmap(jax.random.split)(streams)
            return split[:, 0], split[:, 1]

        key0 = jax.random.PRNGKey(0)
        self._dummy_state = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(lambda k: reset_from_key(k)[0], key0)
        )
        self._dummy_key = key0
        self.single = jax.jit(single)
        self.batched = jax.jit(jax.vmap(batched_one))
        self.seed_streams = jax.jit(seed_streams)
        self.split_streams = jax.jit(split_streams)

    def dummy_carry(self, num_envs: int | None = None) -> tuple[Any, Any]:
        """A zero carry of the right structure, for the first (resetting) call."""
        if num_envs is None:
            return self._dummy_state, self._dummy_key
        jnp = self.jax.numpy
        state = self.jax.tree.map(lambda x: jnp.zeros((num_envs, *x.shape), x.dtype), self._dummy_state)
        return state, jnp.zeros((num_envs, *self._dummy_key.shape), self._dummy_key.dtype)

    def spec(self) -> EnvSpec:
        attack = tuple(f"attack_enemy_{i}" for i in range(self.n_enemies))
        return EnvSpec(
            env_id=self.config.env_id,
            n_agents=self.n_agents,
            obs_dim=self.obs_dim,
            state_dim=self.state_dim,
            n_actions=self.n_actions,
            episode_limit=self.config.episode_limit,
            fully_observable=False,
            has_won=True,
            action_names=MOVE_ACTION_NAMES + attack,
        )


class SmaxEnv:
    """One SMAX environment; ``reset`` and ``step`` are each one call of one jitted function."""

    def __init__(self, config: SmaxConfig, core: SmaxCore | None = None) -> None:
        self.core = core or shared_core(config)
        self.spec = self.core.spec()
        self._carry: Any = None
        self._k_reset: Any = None
        self._avail: np.ndarray | None = None
        self._done = False
        self._noop = np.zeros(self.spec.n_agents, np.int32)

    def reset(self, seed: int | None = None, *, index: int = 0) -> TimeStep:
        """Start an episode. ``seed`` (with ``index``) picks the stream of batched env ``index``;
        ``seed=None`` continues the current stream (the next episode a batched env would play)."""
        core = self.core
        if seed is None and self._carry is not None and self._k_reset is not None:
            stream, reset_key = self._carry[1], self._k_reset
        elif seed is None and self._carry is not None:
            streams, keys = core.split_streams(self._carry[1][None])
            stream, reset_key = streams[0], keys[0]
        else:
            seed = 0 if seed is None else check_seed(seed)
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise EnvOptionError(f"index must be an integer >= 0, got {index!r}")
            streams, keys = core.seed_streams(seed, np.array([index], np.uint32))
            stream, reset_key = streams[0], keys[0]
        carry = self._carry if self._carry is not None else core.dummy_carry()
        self._carry, _, views, *_ = core.single(carry, self._noop, stream, reset_key, True)
        self._k_reset = None
        self._done = False
        return self._timestep(views, 0.0, False, False, False, 0.0)

    def step(self, actions: np.ndarray) -> TimeStep:
        if self._carry is None:
            raise EpisodeOverError("step called before reset; call reset(seed) first")
        if self._done:
            raise EpisodeOverError("the episode is over (terminated or truncated); call reset")
        assert self._avail is not None
        acts = validate_actions(actions, self._avail, self.spec).astype(np.int32)
        stream = self._carry[1]
        self._carry, self._k_reset, views, reward, term, trunc, won, score = self.core.single(
            self._carry, acts, stream, stream, False
        )
        term_b, trunc_b = bool(term), bool(trunc)
        self._done = term_b or trunc_b
        return self._timestep(views, float(reward), term_b, trunc_b, bool(won), float(score))

    def _timestep(self, views: tuple[Any, Any, Any], reward: float, term: bool, trunc: bool, won: bool,
                  score: float) -> TimeStep:
        obs_NO, state_S, avail_NA = (np.asarray(v) for v in views)
        self._avail = avail_NA
        return TimeStep(obs_NO, state_S, avail_NA, reward, term, trunc, {"won": won, "score": score})

    def render(self) -> np.ndarray:
        """The current battle as uint8 ``[H, W, 3]``: allies blue, enemies red, health bars."""
        if self._carry is None:
            raise EpisodeOverError("render called before reset")
        return render_units(self.core, self._carry[0].state)

    def close(self) -> None:
        self._carry = None


class SmaxBatchedEnv:
    """``num_envs`` SMAX environments stepped in ONE jitted, vmapped call, auto-resetting finished ones."""

    def __init__(self, config: SmaxConfig, num_envs: int, core: SmaxCore | None = None) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise EnvOptionError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        self.core = core or shared_core(config)
        self.spec = self.core.spec()
        self.num_envs = num_envs
        self._carry: Any = None
        self._avail: np.ndarray | None = None
        self._no_force = np.zeros(num_envs, bool)
        self._force = np.ones(num_envs, bool)
        self._noop = np.zeros((num_envs, self.spec.n_agents), np.int32)

    def reset(self, seed: int | None = None) -> BatchStep:
        """Environment ``b`` starts from ``fold_in(PRNGKey(seed), b)``; ``None`` continues each stream."""
        core = self.core
        if seed is None and self._carry is not None:
            streams, keys = core.split_streams(self._carry[1])
        else:
            seed = 0 if seed is None else check_seed(seed)
            streams, keys = core.seed_streams(seed, np.arange(self.num_envs, dtype=np.uint32))
        carry = self._carry if self._carry is not None else core.dummy_carry(self.num_envs)
        self._carry, *out = core.batched(carry, self._noop, self._force, streams, keys)
        return self._batch(*out)

    def step(self, actions: np.ndarray) -> BatchStep:
        """One jitted call: step all ``B`` envs (actions ``[B, N]``), auto-reset the finished ones."""
        if self._carry is None:
            raise EpisodeOverError("step called before reset; call reset(seed) first")
        assert self._avail is not None
        acts_BN = validate_actions(actions, self._avail, self.spec).astype(np.int32)
        streams = self._carry[1]
        self._carry, *out = self.core.batched(self._carry, acts_BN, self._no_force, streams, streams)
        return self._batch(*out)

    def _batch(self, views: Any, final: Any, *rest: Any) -> BatchStep:
        obs, state, avail = (np.asarray(v) for v in views)
        f_obs, f_state, f_avail = (np.asarray(v) for v in final)
        reward, term, trunc, won, score = (np.asarray(x) for x in rest)
        self._avail = avail
        return BatchStep(obs, state, avail, reward, term, trunc, won, score, f_obs, f_state, f_avail,
                         device_views=dict(zip(("obs", "state", "avail"), views, strict=True)))

    def render(self, index: int = 0) -> np.ndarray:
        """Environment ``index``'s current battle as uint8 ``[H, W, 3]``."""
        if self._carry is None:
            raise EpisodeOverError("render called before reset")
        if not 0 <= index < self.num_envs:
            raise EnvOptionError(f"index must be in [0, {self.num_envs}), got {index}")
        inner = self.core.jax.tree.map(lambda x: x[index], self._carry[0].state)
        return render_units(self.core, inner)

    def close(self) -> None:
        self._carry = None


_TEAM_RGB = ((40, 110, 230), (220, 50, 50))
_PX_PER_UNIT = 12


def render_units(core: SmaxCore, inner: Any) -> np.ndarray:
    """Draw units (position, size, team colour, health bar, type letter) of a jaxmarl SMAX state."""
    from PIL import Image, ImageDraw

    env = core.env
    width, height = int(env.map_width), int(env.map_height)
    scale = _PX_PER_UNIT
    img = Image.new("RGB", (width * scale, height * scale), (235, 228, 205))
    draw = ImageDraw.Draw(img)
    pos = np.asarray(inner.unit_positions)  # [U, 2]
    alive = np.asarray(inner.unit_alive)  # [U]
    types = np.asarray(inner.unit_types).astype(int)  # [U]
    health = np.asarray(inner.unit_health)  # [U]
    max_health = np.asarray(env.unit_type_health)[types]
    radius = np.asarray(env.unit_type_radiuses)[types]
    shorthands = env.unit_type_shorthands
    for u in range(pos.shape[0]):
        team = 0 if u < env.num_allies else 1
        x, y = pos[u, 0] * scale, (height - pos[u, 1]) * scale  # y up in the game, down in the image
        r = max(radius[u] * scale, 5.0)
        if not alive[u]:
            draw.line([(x - r, y - r), (x + r, y + r)], fill=(120, 120, 120), width=2)
            draw.line([(x - r, y + r), (x + r, y - r)], fill=(120, 120, 120), width=2)
            continue
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_TEAM_RGB[team], outline=(20, 20, 20))
        frac = float(np.clip(health[u] / max_health[u], 0.0, 1.0))
        draw.rectangle([x - r, y - r - 4, x + r, y - r - 2], fill=(60, 60, 60))
        draw.rectangle([x - r, y - r - 4, x - r + 2 * r * frac, y - r - 2], fill=(40, 200, 60))
        draw.text((x - 3, y - 5), shorthands[types[u]], fill=(255, 255, 255))
    return np.asarray(img, dtype=np.uint8)


def make(scenario: str | None, options: dict[str, str]) -> SmaxEnv:
    """A single SMAX environment (``smax:<map>``)."""
    return SmaxEnv(parse_config(scenario, options))


def make_batched(scenario: str | None, options: dict[str, str], num_envs: int) -> SmaxBatchedEnv:
    """``num_envs`` SMAX environments in one jitted, vmapped step."""
    return SmaxBatchedEnv(parse_config(scenario, options), num_envs)
