"""PettingZoo (``pettingzoo:<module>.<env>[,key=value...]``): any PettingZoo ``ParallelEnv`` with discrete actions.

Ids: ``pettingzoo:mpe2.simple_spread_v3``, ``pettingzoo:mpe2.simple_reference_v3,max_cycles=50``. The scenario
is a dotted Python name: a module with a ``parallel_env()`` factory (PettingZoo's convention), or a callable
(class or function) returning a ``ParallelEnv``. ``key=value`` options go to that constructor, converted to
the types of its signature (annotations, else the defaults' types; for PettingZoo's ``**kwargs`` factories
the module's ``raw_env`` signature); a key it does not take is an error naming the keys it takes. marlctl's
own options (never passed on):

- ``team_reward=sum|mean`` (``sum``): the team reward is the sum (or the mean over all agents) of the
  agents' rewards;
- ``limit=N``: the episode limit where the env has no ``max_cycles`` (otherwise the limit is ``max_cycles``,
  the constructor's default or the ``max_cycles=`` option);
- ``turn_based=true``: play a turn-based AEC game (``pettingzoo.classic``) through PettingZoo's
  ``turn_based_aec_to_parallel``; without it an AEC env is refused;
- ``success=terminated|KEY``: what ``won`` means (an episode that terminates before its limit, e.g.
  MPE's ``terminate_on_success=true``, or a truthy ``info[KEY]`` of any agent at the last step);
  without it the env defines no success and ``won`` is always False.

Views: agents in ``possible_agents`` order. Agent ``i``'s observation flattened (a Box reshaped, other
spaces through ``gymnasium.spaces.flatten``) and zero-padded to the largest agent's size; the global state
is ``state()`` where the env implements it, else the padded observations concatenated. The avail mask is
the observation dict's ``action_mask`` (or the info's) where present, else every action of the agent's
``Discrete`` space; actions beyond a smaller agent's space are never available. An agent that cannot act
(its mask is all false: not its turn, or it has left the episode) has only action 0 available and its
action is not used, as SMAC treats dead units. ``score`` = the episode's team return so far.

Seeding (the contract of :mod:`marlctl.envs.vector`): episode ``k`` of a stream resets the PettingZoo
env with ``seed = SeedSequence([stream_seed, k])``, so ``reset(seed, index=b)`` replays batched env
``b`` and ``reset()`` continues the stream. ``render()`` is the env's ``rgb_array`` render (the env is
built with ``render_mode="rgb_array"`` where its constructor and metadata offer it).

Batched form: ``B`` adapters stepped in a loop in this process (:class:`PettingZooBatchedEnv`, the batch's
actions checked once). Worker processes were measured against it (``bench/pettingzoo.py``, "batched form",
2 workers, B = 8 and 32, on the shared 2-core machine): per CPU second they stepped 0.69-0.89x as many envs
as the loop (pickling, pipes), and in wall clock they came out between 0.7x and 1.4x the loop from run to
run, ahead only while they drew CPU time away from the machine's other jobs. The loop is kept: it is the
cheaper form for a trainer whose learner shares those cores.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from marlctl.envs.base import BatchedEnv, BatchStep, EnvFamily, EnvSpec, TimeStep
from marlctl.envs.errors import (
    BackendUnavailableError,
    EnvError,
    EnvOptionError,
    EpisodeOverError,
    UnknownEnvError,
)
from marlctl.envs.vector import LoopBatchedEnv, check_seed, env_seed, fresh_seed, validate_actions

EXAMPLES: tuple[str, ...] = ("mpe2.simple_spread_v3", "mpe2.simple_reference_v3", "mpe2.simple_speaker_listener_v4")
ADAPTER_OPTIONS: dict[str, str] = {
    "team_reward": "sum | mean of the agents' rewards (sum)",
    "limit": "episode limit where the env has no max_cycles",
    "turn_based": "true: a turn-based AEC game via turn_based_aec_to_parallel (false)",
    "success": "terminated | an info key: what `won` means (none)",
}
RESERVED = ("render_mode",)  # set by the adapter itself

FAMILY = EnvFamily(
    name="pettingzoo",
    summary="any PettingZoo ParallelEnv with Discrete actions, pettingzoo:<module>.<env> "
    "(e.g. the MPE2 scenarios listed; options go to the env's constructor, type-checked)",
    scenarios=EXAMPLES,
    options=(("<constructor keyword>", "passed to the env's constructor, converted to its signature's type"),
             *ADAPTER_OPTIONS.items()),
    backend_module="pettingzoo",
)
_INSTALL_HINT = "PettingZoo is not installed: pip install 'marlctl[pettingzoo]' (pettingzoo 1.27 and mpe2)"


class PettingZooEnvError(UnknownEnvError):
    """A ``pettingzoo:`` scenario that does not import, is not a parallel env, or has non-discrete actions."""


def availability() -> tuple[bool, str]:
    """Whether PettingZoo can run here, for ``marlctl envs list``."""
    if importlib.util.find_spec("pettingzoo") is None:
        return False, _INSTALL_HINT
    mpe = "mpe2 installed" if importlib.util.find_spec("mpe2") is not None else "mpe2 not installed"
    return True, f"pettingzoo installed ({mpe})"


@dataclass(frozen=True)
class AdapterConfig:
    """marlctl's own options of a ``pettingzoo:`` id (the rest go to the env's constructor)."""

    team_reward: str = "sum"
    """``sum`` or ``mean`` of the agents' rewards."""
    limit: int = 0
    """Episode limit for envs without ``max_cycles`` (0: take ``max_cycles``)."""
    turn_based: bool = False
    """Play a turn-based AEC env through ``turn_based_aec_to_parallel``."""
    success: str = ""
    """``terminated`` or an info key; empty: the env defines no success."""

    def __post_init__(self) -> None:
        if self.team_reward not in ("sum", "mean"):
            raise EnvOptionError(f"pettingzoo: team_reward must be sum or mean, got {self.team_reward!r}")
        if self.limit < 0:
            raise EnvOptionError(f"pettingzoo: limit must be an integer >= 1, got {self.limit}")


# ------------------------------------------------------------------ resolving the scenario


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _import(name: str) -> types.ModuleType | None:
    """``name`` imported, or None when no module of that name exists (errors inside it are raised)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        raise PettingZooEnvError(f"pettingzoo:{name}: the module does not import ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - any failure while importing user code is bad input
        raise PettingZooEnvError(f"pettingzoo:{name}: the module does not import ({_first_line(exc)})") from None


def _resolve(scenario: str) -> tuple[Callable[..., Any], list[Callable[..., Any]], str]:
    """``(factory, signature sources, kind)`` of a scenario; kind is ``parallel`` or ``aec``."""
    example = "e.g. pettingzoo:mpe2.simple_spread_v3"
    if not scenario or any(not part.isidentifier() for part in scenario.split(".")):
        raise PettingZooEnvError(f"pettingzoo: scenario {scenario!r} is not a dotted Python name; {example} "
                                 "(a module with parallel_env(), or a callable returning a ParallelEnv)")
    module = _import(scenario)
    if module is not None:
        raw = getattr(module, "raw_env", None)
        for attr, kind in (("parallel_env", "parallel"), ("env", "aec")):
            factory = getattr(module, attr, None)
            if callable(factory):
                return factory, [factory, *([raw] if callable(raw) else [])], kind
        raise PettingZooEnvError(f"pettingzoo:{scenario}: module {scenario} has no parallel_env() (nor env()); "
                                 f"accepted: a PettingZoo env module with parallel_env(), or a callable returning "
                                 f"a ParallelEnv ({example})")
    parent, _, attr = scenario.rpartition(".")
    owner = _import(parent) if parent else None
    if owner is None:
        raise PettingZooEnvError(f"pettingzoo:{scenario}: no module named {scenario.split('.')[0]!r} (or "
                                 f"{scenario}) is installed; accepted: an importable module with parallel_env(), "
                                 f"or module.callable returning a ParallelEnv ({example}; pip install mpe2)")
    factory = getattr(owner, attr, None)
    if not callable(factory):
        raise PettingZooEnvError(f"pettingzoo:{scenario}: {parent} has no env module or callable named {attr!r}; "
                                 f"accepted: a module with parallel_env(), or a callable returning a ParallelEnv")
    return factory, [factory], "callable"


def _signature(sources: list[Callable[..., Any]]) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """The constructor's named keyword parameters, their type hints, and whether it takes any ``**kwargs``."""
    for src in sources:
        target = src.__init__ if inspect.isclass(src) else src  # type: ignore[misc]
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        named = {n: p for n, p in sig.parameters.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
        if named:
            try:
                hints = typing.get_type_hints(target)
            except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the defaults' types
                hints = {}
            return named, hints, False
    return {}, {}, True


def _convert(key: str, raw: str, param: inspect.Parameter | None, hint: Any, where: str) -> Any:
    """``raw`` as the parameter's type (annotation, else its default's type, else a literal guess)."""
    kinds: list[Any] = []
    if hint is not None:
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kinds = list(args)
    elif param is not None and param.default is not inspect.Parameter.empty and param.default is not None:
        kinds = [type(param.default)]
    if not kinds:
        kinds = [bool, int, float, str]
    if raw.lower() == "none" and (type(None) in kinds or param is None or param.default is None):
        return None
    for kind in (k for k in (bool, int, float, str) if k in kinds):
        if kind is bool:
            if raw.lower() in ("true", "false", "1", "0", "yes", "no"):
                return raw.lower() in ("true", "1", "yes")
            continue
        try:
            return kind(raw)
        except ValueError:
            continue
    names = " | ".join(getattr(k, "__name__", str(k)) for k in kinds)
    raise EnvOptionError(f"{where}: option {key}={raw!r} is not a valid {names} (the constructor's {key})")


def _split_options(scenario: str, options: dict[str, str], params: dict[str, inspect.Parameter],
                   hints: dict[str, Any], open_kwargs: bool) -> tuple[AdapterConfig, dict[str, Any]]:
    from marlctl.envs.registry import config_from_options

    where = f"pettingzoo:{scenario}"
    ours = {k: v for k, v in options.items() if k in ADAPTER_OPTIONS}
    kwargs: dict[str, Any] = {}
    for key, raw in options.items():
        if key in ours:
            continue
        if key in RESERVED or (not open_kwargs and key not in params):
            takes = ", ".join(f"{n} (default {p.default!r})" if p.default is not inspect.Parameter.empty else n
                              for n, p in params.items() if n not in RESERVED)
            raise EnvOptionError(f"{where}: unknown option {key!r}; the constructor takes: {takes or 'nothing'}; "
                                 f"marlctl's own: {', '.join(ADAPTER_OPTIONS)}")
        kwargs[key] = _convert(key, raw, params.get(key), hints.get(key), where)
    return config_from_options(AdapterConfig, "pettingzoo", ours), kwargs


# ------------------------------------------------------------------ the layout of one env's views


@dataclass(frozen=True)
class _Layout:
    """How one PettingZoo env maps onto marlctl's arrays (fixed per id)."""

    agents: tuple[str, ...]
    obs_sizes: tuple[int, ...]
    n_actions_i: tuple[int, ...]
    starts: tuple[int, ...]
    """Each agent's ``Discrete.start`` (marlctl action ``a`` is the env's ``start + a``)."""
    obs_key: tuple[str | None, ...]
    """``observation`` where the obs is a dict with an action mask, else None."""
    masked: tuple[bool, ...]
    has_state: bool


def _layout(env: Any, where: str) -> _Layout:
    from gymnasium import spaces

    agents = tuple(getattr(env, "possible_agents", ()) or ())
    if not agents:
        raise PettingZooEnvError(f"{where}: the env has no possible_agents; accepted: a ParallelEnv with a fixed "
                                 "set of possible agents")
    sizes, n_act, starts, keys, masked = [], [], [], [], []
    for agent in agents:
        act = env.action_space(agent)
        if not isinstance(act, spaces.Discrete):
            hint = " (MPE: drop continuous_actions=true)" if isinstance(act, spaces.Box) else ""
            raise PettingZooEnvError(f"{where}: agent {agent}'s action space is {act}, not Discrete; marlctl takes "
                                     f"Discrete action spaces only{hint}")
        n_act.append(int(act.n))
        starts.append(int(act.start))
        obs = env.observation_space(agent)
        key = None
        if isinstance(obs, spaces.Dict) and "action_mask" in obs.spaces:
            rest = {k: s for k, s in obs.spaces.items() if k != "action_mask"}
            key = "observation" if list(rest) == ["observation"] else None
            obs = rest["observation"] if key else spaces.Dict(rest)
            masked.append(True)
        else:
            masked.append(False)
        keys.append(key)
        sizes.append(int(spaces.flatdim(obs)))
    return _Layout(agents, tuple(sizes), tuple(n_act), tuple(starts), tuple(keys), tuple(masked), True)


# ------------------------------------------------------------------ the single env


def episode_seed(stream_seed: int, episode: int) -> int:
    """The PettingZoo ``reset(seed=...)`` of episode ``episode`` of a stream."""
    return int(np.random.SeedSequence([stream_seed, episode]).generate_state(1, np.uint32)[0])


class PettingZooEnv:
    """One PettingZoo ``ParallelEnv`` behind marlctl's ``Env`` protocol."""

    def __init__(self, spec: EnvSpec, pz_env: Any, layout: _Layout, cfg: AdapterConfig) -> None:
        from gymnasium import spaces

        self.spec, self.env, self.layout, self.cfg = spec, pz_env, layout, cfg
        n, a = spec.n_agents, spec.n_actions
        self._base_avail = np.zeros((n, a), dtype=bool)  # [N, A] the actions each agent's space has
        for i, k in enumerate(layout.n_actions_i):
            self._base_avail[i, :k] = True
        self._noop = np.zeros(a, dtype=bool)
        self._noop[0] = True
        self._flat: list[Callable[[Any], np.ndarray]] = []
        for i, agent in enumerate(layout.agents):
            space = pz_env.observation_space(agent)
            if layout.masked[i]:
                space = space.spaces["observation"] if layout.obs_key[i] else spaces.Dict(
                    {k: s for k, s in space.spaces.items() if k != "action_mask"})
            if isinstance(space, spaces.Box):
                self._flat.append(lambda o: np.asarray(o, dtype=np.float32).reshape(-1))
            else:
                self._flat.append(lambda o, s=space: np.asarray(spaces.flatten(s, o), dtype=np.float32))
        self._stream: int | None = None
        self._episode = 0
        self._t = 0
        self._return = 0.0
        self._done = True
        self._avail: np.ndarray | None = None

    def _views(self, obs_d: dict, info_d: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lay = self.layout
        obs = np.zeros((self.spec.n_agents, self.spec.obs_dim), dtype=np.float32)  # [N, O]
        avail = self._base_avail.copy()  # [N, A]
        for i, agent in enumerate(lay.agents):
            o = obs_d.get(agent)
            if o is None:  # left the episode
                avail[i] = self._noop
                continue
            mask = None
            if lay.masked[i]:
                mask = o["action_mask"]
                o = o[lay.obs_key[i]] if lay.obs_key[i] else {k: v for k, v in o.items() if k != "action_mask"}
            else:
                info = info_d.get(agent)
                if info and isinstance(info, dict) and "action_mask" in info:
                    mask = info["action_mask"]
            flat = self._flat[i](o)
            obs[i, : flat.shape[0]] = flat
            if mask is not None:
                avail[i, : lay.n_actions_i[i]] &= np.asarray(mask, dtype=bool).reshape(-1)
                if not avail[i].any():  # cannot act now (not its turn): only the unused action 0
                    avail[i] = self._noop
        if lay.has_state:
            state = np.asarray(self.env.state(), dtype=np.float32).reshape(-1)
        else:
            state = obs.reshape(-1)
        return obs, state, avail

    def reset(self, seed: int | None = None, *, index: int = 0) -> TimeStep:
        """Start an episode; ``seed`` with ``index`` = batched environment ``index``'s stream, None continues."""
        if seed is not None:
            self._stream, self._episode = env_seed(check_seed(seed), index), 0
        elif self._stream is None:
            self._stream, self._episode = env_seed(fresh_seed(), index), 0
        else:
            env_seed(0, index)  # validates index
        obs_d, info_d = self.env.reset(seed=episode_seed(self._stream, self._episode))
        self._episode += 1
        self._t, self._return, self._done = 0, 0.0, False
        obs, state, avail = self._views(obs_d, info_d or {})
        self._avail = avail
        return TimeStep(obs, state, avail, info={"won": False, "score": 0.0})

    def step(self, actions: np.ndarray) -> TimeStep:
        if self._done or self._avail is None:
            raise EpisodeOverError(
                f"{self.spec.env_id}: step() after the episode ended (or before reset()); call reset() first"
            )
        return self.step_valid(validate_actions(actions, self._avail, self.spec))

    def step_valid(self, actions_N: np.ndarray) -> TimeStep:
        """``step`` with actions already checked against the current avail mask (the batched form checks the batch)."""
        lay = self.layout
        live = self.env.agents
        act = {agent: lay.starts[i] + int(actions_N[i]) for i, agent in enumerate(lay.agents) if agent in live}
        obs_d, rew_d, term_d, trunc_d, info_d = self.env.step(act)
        self._t += 1
        rewards = [float(rew_d.get(agent, 0.0)) for agent in lay.agents]
        reward = sum(rewards) / (len(rewards) if self.cfg.team_reward == "mean" else 1)
        self._return += reward
        ended = not self.env.agents
        terminated = ended and any(bool(term_d.get(agent, False)) for agent in lay.agents)
        truncated = not terminated and (ended or self._t >= self.spec.episode_limit)
        self._done = terminated or truncated
        obs, state, avail = self._views(obs_d, info_d or {})
        self._avail = avail
        won = False
        if self._done and self.cfg.success:
            if self.cfg.success == "terminated":
                won = terminated
            else:
                won = any(bool(i.get(self.cfg.success)) for i in (info_d or {}).values() if isinstance(i, dict))
        info = {"won": bool(won), "score": float(self._return)}
        return TimeStep(obs, state, avail, float(reward), terminated, truncated, info)

    def render(self) -> np.ndarray:
        """The env's ``rgb_array`` frame ``[H, W, 3]`` uint8."""
        if self._avail is None:
            raise EpisodeOverError(f"{self.spec.env_id}: call reset() before render()")
        modes = (getattr(self.env, "metadata", None) or {}).get("render_modes", [])
        if getattr(self.env, "render_mode", None) != "rgb_array":
            raise EnvError(f"{self.spec.env_id}: the env does not render to an rgb_array (its render modes: "
                           f"{', '.join(modes) or 'none'})")
        img = np.asarray(self.env.render())
        if img.ndim != 3 or img.shape[2] not in (3, 4):
            raise EnvError(f"{self.spec.env_id}: render() gave an array of shape {list(img.shape)}, not [H, W, 3]")
        return np.ascontiguousarray(img[..., :3]).astype(np.uint8)

    def close(self) -> None:
        self._done = True
        self._avail = None
        try:
            self.env.close()
        except Exception:  # noqa: BLE001 - a third-party env's close is best effort
            pass


# ------------------------------------------------------------------ building


def _builder(scenario: str | None, options: dict[str, str]) -> tuple[Callable[[], PettingZooEnv], EnvSpec]:
    """A factory of fresh adapters for the id, and its spec (one env is built now and handed out first)."""
    from marlctl.envs.registry import format_env_id

    if scenario is None:
        raise PettingZooEnvError(f"pettingzoo needs a scenario: pettingzoo:<module>.<env>, e.g. "
                                 f"{', '.join('pettingzoo:' + e for e in EXAMPLES)}")
    if importlib.util.find_spec("pettingzoo") is None:
        raise BackendUnavailableError(f"pettingzoo:{scenario}: {_INSTALL_HINT}")
    where = f"pettingzoo:{scenario}"
    factory, sources, kind = _resolve(scenario)
    params, hints, open_kwargs = _signature(sources)
    cfg, kwargs = _split_options(scenario, options, params, hints, open_kwargs)
    render_modes = []
    for src in sources:
        render_modes = list((getattr(src, "metadata", None) or {}).get("render_modes", [])) or render_modes
    if "render_mode" in params and (not render_modes or "rgb_array" in render_modes):
        kwargs["render_mode"] = "rgb_array"

    def build() -> Any:
        from pettingzoo.utils.conversions import turn_based_aec_to_parallel
        from pettingzoo.utils.env import AECEnv, ParallelEnv

        try:
            env = factory(**kwargs)
        except Exception as exc:  # noqa: BLE001 - the constructor's own refusal of an option value
            given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "render_mode") or "no options"
            raise EnvOptionError(f"{where}: building the env with {given} failed: {_first_line(exc)}") from None
        if isinstance(env, AECEnv) or (kind == "aec" and not isinstance(env, ParallelEnv)):
            if not cfg.turn_based:
                env.close()
                raise PettingZooEnvError(f"{where} is an AEC env, not a ParallelEnv; accepted: a ParallelEnv "
                                         "(a module with parallel_env()), or turn_based=true to play a turn-based "
                                         "AEC game through pettingzoo's turn_based_aec_to_parallel")
            env = turn_based_aec_to_parallel(env)
        if not isinstance(env, ParallelEnv):
            raise PettingZooEnvError(f"{where} built a {type(env).__name__}, not a pettingzoo ParallelEnv; "
                                     "accepted: a module with parallel_env(), or a callable returning a ParallelEnv")
        return env

    first = build()
    layout = _layout(first, where)
    limit = kwargs.get("max_cycles", getattr(first.unwrapped, "max_cycles", None))
    if cfg.limit:
        limit = cfg.limit
    if not isinstance(limit, int) or limit < 1:
        first.close()
        raise EnvOptionError(f"{where}: the env has no max_cycles, so give the episode limit as limit=N")
    first.reset(seed=0)
    try:
        state_dim = int(np.asarray(first.state()).size)
        has_state = True
    except NotImplementedError:
        has_state = False
    layout = dataclasses.replace(layout, has_state=has_state)
    n, obs_dim = len(layout.agents), max(layout.obs_sizes)
    spec = EnvSpec(
        env_id=format_env_id("pettingzoo", scenario, options),
        n_agents=n,
        obs_dim=obs_dim,
        state_dim=state_dim if has_state else n * obs_dim,
        n_actions=max(layout.n_actions_i),
        episode_limit=int(limit),
        fully_observable=False,
        has_won=bool(cfg.success),
    )
    handed: list[Any] = [first]

    def make_single() -> PettingZooEnv:
        env = handed.pop() if handed else build()
        return PettingZooEnv(spec, env, layout, cfg)

    return make_single, spec


def make(scenario: str | None, options: dict[str, str]) -> PettingZooEnv:
    make_single, _ = _builder(scenario, options)
    return make_single()


class PettingZooBatchedEnv(LoopBatchedEnv):
    """``B`` adapters stepped in a loop in this process; the batch's actions are checked once, before any env steps."""

    envs: list[PettingZooEnv]

    def step(self, actions: np.ndarray) -> BatchStep:
        if self._avail is None:
            raise EpisodeOverError(f"{self.spec.env_id}: call reset() before step()")
        actions_BN = validate_actions(actions, self._avail, self.spec)
        finals = [env.step_valid(a) for env, a in zip(self.envs, actions_BN, strict=True)]
        nexts = [env.reset() if ts.done else ts for env, ts in zip(self.envs, finals, strict=True)]
        out = self._stack(nexts, finals)
        self._avail = out.avail
        return out


def make_batched(scenario: str | None, options: dict[str, str], num_envs: int) -> BatchedEnv:
    make_single, _ = _builder(scenario, options)
    return PettingZooBatchedEnv(make_single, num_envs)
