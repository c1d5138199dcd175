"""Typed training configuration: one dataclass per component, layered TOML/JSON loading with provenance.

``PRECEDENCE`` below is the one statement of which layer wins; ``config_layers`` builds the layers,
``load_config`` resolves them and ``explain_config`` says, for every key, which layer set it and
which values it overrode (``marlctl config show``). The packaged files hold only deviations from
what they override (tests/test_config_show.py checks it).
Sections are the fields of ``TrainConfig`` (``run``, ``env``, ``agent``, ``replay``, ``exploration``,
``optim``, ``learner``, ``mixer``, ``algo``); ``algo`` holds the algorithm's own options dataclass
(``AlgorithmSpec.config_cls``). An unknown section or key is an error naming the valid ones.

The algorithm table is ``trainer/registry.py``. An options dataclass may define
``env_warnings(self, spec) -> list[str]`` to warn about a choice that does not suit the environment
(e.g. QTRAN's V_jt = 0 on a partially observable env); ``check_against_env`` turns those into
``ConfigWarning``s and the run log.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from marlctl.agents.recurrent import HEAD_LAYERS
from marlctl.trainer.distributed.settings import RayConfig
from marlctl.trainer.errors import ConfigValueError, UnknownConfigKeyError
from marlctl.trainer.registry import NoOptions, algorithm_spec

if TYPE_CHECKING:
    from marlctl.envs.base import EnvSpec

CONFIG_DIR = Path(__file__).parent / "configs"

PRECEDENCE = (
    "later wins: dataclass default < algo/<algo>.toml < env/<family>.toml < env/<family>.<kind>.toml "
    "< env/<family>.<algo>.toml < --config FILE < --set < command line (--algo, --env, --steps, --seed, --device). "
    "An env family's file wins over an algorithm's own file: the algorithm file holds what its paper used on its "
    "own benchmarks, the family file what that environment needs from every method, so methods are compared like "
    "for like on it (e.g. env/matrix.toml's replay.batch_size = 32 beats algo/remix.toml's 128). A setting one kind "
    "of method, or one method, needs on a family goes in env/<family>.<kind>.toml (kind: value or policy) or "
    "env/<family>.<algo>.toml, which win over both."
)
DEFAULT_LAYER = "default"


class ConfigWarning(UserWarning):
    """A valid config choice that does not suit the environment (e.g. V_jt = 0 under partial observability)."""


# ------------------------------------------------------------------ components


@dataclass(frozen=True)
class RunConfig:
    """The run as a whole: budget, seed, device, logging, evaluation and checkpoint cadence."""

    algo: str = "vdn"
    """Algorithm name (a key of ``registry.ALGORITHMS``)."""
    steps: int = 100_000
    """Training budget in environment steps (joint steps, summed over the batched envs)."""
    seed: int = 0
    """Seed of every RNG (torch, numpy, python, environments)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where networks and updates run: ``auto`` picks CUDA when available."""
    torch_threads: int = 1
    """CPU threads of PyTorch ops (1 suits the small per-agent nets and shared machines; 0 = PyTorch's default)."""
    log_interval: int = 2_000
    """Env steps between train log lines (JSONL + TensorBoard); metrics are averaged in between."""
    eval_interval: int = 10_000
    """Env steps between greedy evaluations (0 = only at the end)."""
    eval_episodes: int = 32
    """Episodes per greedy evaluation."""
    save_interval: int = 50_000
    """Env steps between checkpoints (a final one is always written)."""
    checkpoint_buffer: bool = True
    """Keep one snapshot of the replay buffer beside the latest checkpoint (``checkpoints/replay_<n>.npz``) so
    ``--resume`` continues exactly; False saves no snapshot and a resumed run refills its buffer (no longer
    bit-identical). Step checkpoints never carry the buffer."""
    keep_checkpoints: int = 3
    """How many ``step_<n>.pt`` files to keep (``latest.pt`` is always kept); 0 keeps all."""
    progress: bool = True
    """Show the Rich progress bar."""


@dataclass(frozen=True)
class EnvConfig:
    """The training environment and how it is rolled out."""

    env_id: str = "matrix:qtran"
    """Environment id (``smax:3m``, ``grf:academy_empty_goal_close``, ``matrix:qtran`` ...)."""
    num_envs: int = 8
    """Environments stepped together in one batched call (B)."""
    rollout: Literal["episodes", "steps"] = "episodes"
    """``episodes``: each iteration resets the envs and plays one episode per env (exact resume);
    ``steps``: envs run continuously, ``steps_per_iteration`` batched steps per iteration
    (faster; a resume restarts the in-flight episodes)."""
    steps_per_iteration: int = 0
    """Batched steps per iteration in ``steps`` mode (0 = the env's episode limit)."""


@dataclass(frozen=True)
class AgentConfig:
    """The per-agent network (``agents.recurrent.AgentNetConfig`` minus the env's dims)."""

    hidden_dim: int = 64
    """MLP width and GRU state size H."""
    recurrent: bool = True
    """GRU agent (True) or feed-forward agent (False)."""
    hidden_layers: int = 2
    """Hidden layers of width ``hidden_dim``, the GRU / feed-forward layer included (>= 2; QTRAN's predator-prey
    agents: 3, feed-forward)."""
    prev_action_input: bool = True
    """Feed the one-hot previous own action."""
    agent_id_input: bool = True
    """Feed the one-hot agent id (shared parameters)."""
    head_layers: int = 1
    """Layers of the head after the GRU: 1 = linear, 2 = a ReLU layer of width ``hidden_dim`` + linear."""

    def validate(self) -> None:
        if self.hidden_layers < 2:
            raise ValueError(f"agent.hidden_layers={self.hidden_layers}; valid: an integer >= 2 (the input layer and "
                             "the GRU / feed-forward layer)")
        if self.head_layers not in HEAD_LAYERS:
            raise ValueError(f"agent.head_layers={self.head_layers}; valid: 1 (linear head) or 2 (ReLU layer + "
                             "linear)")


@dataclass(frozen=True)
class ReplayConfig:
    """Episode replay buffer of value methods."""

    capacity: int = 5_000
    """Episodes kept (oldest overwritten first)."""
    batch_size: int = 32
    """Episodes per gradient update."""
    learning_starts: int = 0
    """Episodes in the buffer before the first update (0 = ``batch_size``)."""


@dataclass(frozen=True)
class ExplorationConfig:
    """Epsilon-greedy exploration of value methods, annealed linearly in env steps."""

    epsilon_start: float = 1.0
    """Epsilon at step 0."""
    epsilon_finish: float = 0.05
    """Epsilon after the anneal."""
    epsilon_anneal_steps: int = 50_000
    """Env steps of the linear anneal."""


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer shared by every network of an algorithm."""

    optimizer: Literal["rmsprop", "adam"] = "rmsprop"
    """RMSprop (pymarl) or Adam (the QTRAN paper)."""
    lr: float = 5e-4
    """Learning rate."""
    rmsprop_alpha: float = 0.99
    """RMSprop smoothing constant."""
    eps: float = 1e-5
    """Optimizer epsilon."""
    grad_clip: float = 10.0
    """Max global gradient norm (0 = no clipping)."""


@dataclass(frozen=True)
class ValueLearnerConfig:
    """Learning targets and update cadence: ``gamma`` for every method, the rest for the value methods."""

    gamma: float = 0.99
    """Discount factor of the task (every method; TAD-PPO's transformed MDP uses gamma^(1/n) from it)."""
    double_q: bool = True
    """Pick the next greedy action with the online agent, evaluate it with the target (double Q)."""
    td_lambda: float = 0.0
    """TD(lambda) returns when > 0 (0 = one-step targets)."""
    n_step: int = 1
    """n-step returns when > 1 (exclusive with ``td_lambda``)."""
    target_update_episodes: int = 200
    """Episodes between hard target-network updates."""
    updates_per_iteration: int = 1
    """Gradient updates after each rollout iteration."""
    normalize_state: bool = False
    """Normalize the global state given to mixers by a running mean/std (for raw states such as SMAX's
    unit positions, which otherwise blow up QMIX's hypernetworks)."""

    def validate(self) -> None:
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigValueError(f"learner.gamma={self.gamma}; valid: 0 < gamma <= 1")


@dataclass(frozen=True)
class MixerConfig:
    """Widths of the value methods' networks above the agents (each method reads the ones it builds)."""

    mixing_embed_dim: int = 32
    """Width of the QMIX mixing layer (QMIX, OW/CW-QMIX, ReMIX)."""
    hypernet_embed: int = 64
    """Width of the QMIX hypernetworks' hidden layer."""
    hypernet_layers: int = 2
    """1 = linear hypernetworks, 2 = one hidden layer."""
    central_embed_dim: int = 256
    """Width of the unrestricted Q*'s feed-forward layers (OW/CW-QMIX, ReMIX)."""
    joint_embed_dim: int = 64
    """Width of QTRAN's joint networks Q_jt / V_jt (appendix C: 32 for the matrix game, 64 for predator-prey)."""

    def validate(self) -> None:
        small = [f"mixer.{k}={v}" for k, v in dataclasses.asdict(self).items() if v < 1]
        if small or self.hypernet_layers not in (1, 2):
            raise ConfigValueError(f"{', '.join(small) or f'mixer.hypernet_layers={self.hypernet_layers}'}; valid: "
                                   "widths >= 1, hypernet_layers 1 or 2")


ALGO_SECTION = "algo"
SECTION_TYPES: dict[str, type] = {
    "run": RunConfig,
    "env": EnvConfig,
    "agent": AgentConfig,
    "replay": ReplayConfig,
    "exploration": ExplorationConfig,
    "optim": OptimConfig,
    "learner": ValueLearnerConfig,
    "mixer": MixerConfig,
    "ray": RayConfig,
}


@dataclass(frozen=True)
class TrainConfig:
    """The fully resolved configuration of one training run (what ``config.json`` holds)."""

    run: RunConfig = field(default_factory=RunConfig)
    """Budget, seed, device, logging/eval/checkpoint cadence."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Environment id and batched rollout."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """Per-agent network architecture."""
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    """Episode replay (value methods)."""
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    """Epsilon-greedy schedule (value methods)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and gradient clipping."""
    learner: ValueLearnerConfig = field(default_factory=ValueLearnerConfig)
    """Discount (every method), targets and update cadence (value methods)."""
    mixer: MixerConfig = field(default_factory=MixerConfig)
    """Widths of the mixers, Q* and QTRAN's joint networks (value methods)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Rollout workers on a Ray cluster (``trainer/distributed``; an empty address = the single-process path)."""
    algo: Any = field(default_factory=NoOptions)
    """The algorithm's own options (an instance of its ``AlgorithmSpec.config_cls``)."""

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in (*SECTION_TYPES, ALGO_SECTION)}

    def replace(self, **sections: Any) -> TrainConfig:
        return dataclasses.replace(self, **sections)


# ------------------------------------------------------------------ loading


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a TOML/JSON/``--set`` value to the field type ``tp``, or raise naming ``where``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigValueError(f"{where}={value!r} is not valid; valid: {', '.join(map(str, choices))}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigValueError(f"{where}={value!r} is not a boolean (use true or false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigValueError(f"{where}={value!r} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    as_float = float(value)  # "1e5"
                except ValueError:
                    as_float = 0.5
                if as_float.is_integer():
                    return int(as_float)
        raise ConfigValueError(f"{where}={value!r} is not an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigValueError(f"{where}={value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigValueError(f"{where}={value!r} is not a number") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigValueError(f"{where}={value!r} is not a string")
        return value
    if origin in (tuple, list):
        (item_tp, *_rest) = typing.get_args(tp) or (str,)
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_coerce(v, item_tp, where) for v in items)
    return value


def build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``; unknown keys are an error naming the valid ones."""
    ftypes = _field_types(cls)
    unknown = sorted(set(values) - set(ftypes))
    if unknown:
        valid = ", ".join(ftypes) if ftypes else "none (this section takes no keys)"
        raise UnknownConfigKeyError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; valid keys of "
                                    f"section {section!r}: {valid}")
    kwargs = {k: _coerce(v, ftypes[k], f"{section}.{k}") for k, v in values.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigValueError(f"section {section!r}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigValueError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigValueError(f"section {section!r}: {exc}") from None
    return obj


def read_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a TOML (``.toml``) or JSON (``.json``) config file of ``[section]`` tables."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        elif path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            raise ConfigValueError(f"config file {path}: unknown format {path.suffix!r}; valid: .toml, .json")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigValueError(f"config file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigValueError(f"config file {path}: expected one table per section (key = value); valid sections: "
                               f"{', '.join([*SECTION_TYPES, ALGO_SECTION])}")
    return data


def parse_overrides(overrides: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["optim.lr=1e-3", ...]`` -> ``{"optim": {"lr": "1e-3"}}`` (values coerced later by field type)."""
    out: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigValueError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=0.001")
        out.setdefault(section, {})[name] = value.strip()
    return out


def _merge(layers: Iterable[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    valid = [*SECTION_TYPES, ALGO_SECTION]
    for layer in layers:
        for section, values in layer.items():
            if section not in valid:
                raise UnknownConfigKeyError(f"unknown config section {section!r}; valid sections: {', '.join(valid)}")
            merged.setdefault(section, {}).update(values)
    return merged


def env_family(env_id: str) -> str:
    """The family prefix of an env id (``smax:3m`` -> ``smax``, ``hallway`` -> ``hallway``)."""
    return env_id.split(":", 1)[0].split(",", 1)[0].strip()


def _packaged(kind: str, name: str) -> dict[str, dict[str, Any]]:
    path = CONFIG_DIR / kind / f"{name}.toml"
    return read_config_file(path) if path.is_file() else {}


def from_sections(sections: dict[str, dict[str, Any]]) -> TrainConfig:
    """Build a ``TrainConfig`` from merged ``{section: {key: value}}`` (``run.algo`` selects ``[algo]``'s class)."""
    sections = _merge([sections])
    built = {name: build_section(cls, sections.get(name, {}), name) for name, cls in SECTION_TYPES.items()}
    spec = algorithm_spec(built["run"].algo)
    algo_opts = build_section(spec.config_cls, sections.get(ALGO_SECTION, {}), ALGO_SECTION)
    return TrainConfig(**built, algo=algo_opts)


@dataclass(frozen=True)
class ConfigLayer:
    """One layer of a run's config: where it comes from and the ``{section: {key: value}}`` it sets."""

    name: str
    """``algo/remix.toml``, ``env/matrix.toml``, ``--config FILE``, ``--set`` or ``command line``."""
    sections: dict[str, dict[str, Any]]


def packaged_layers(algo: str, env_id: str) -> list[ConfigLayer]:
    """The packaged files that apply to ``algo`` on ``env_id``'s family, lowest first (missing files skipped)."""
    kind = algorithm_spec(algo).kind  # a clear error first
    family = env_family(env_id)
    names = [("algo", algo), ("env", family), ("env", f"{family}.{kind}"), ("env", f"{family}.{algo}")]
    return [ConfigLayer(f"{folder}/{name}.toml", _packaged(folder, name)) for folder, name in names
            if (CONFIG_DIR / folder / f"{name}.toml").is_file()]


def config_layers(
    algo: str,
    env_id: str,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    **run_fields: Any,
) -> list[ConfigLayer]:
    """Every layer of a new run's config, lowest first (``PRECEDENCE``); the dataclass defaults lie below them."""
    layers = packaged_layers(algo, env_id)
    if config_file is not None:
        layers.append(ConfigLayer(f"--config {config_file}", read_config_file(config_file)))
    if overrides:
        layers.append(ConfigLayer("--set", parse_overrides(overrides)))
    cli: dict[str, Any] = {"algo": algo, **{k: v for k, v in run_fields.items() if v is not None}}
    layers.append(ConfigLayer("command line", {"run": cli, "env": {"env_id": env_id}}))
    return layers


def load_config(
    algo: str,
    env_id: str,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    **run_fields: Any,
) -> TrainConfig:
    """Resolve the layered config of a new run; ``run_fields`` (steps, seed, device) win over every layer."""
    return resolve_layers(config_layers(algo, env_id, config_file, overrides, **run_fields))


def resolve_layers(layers: Iterable[ConfigLayer]) -> TrainConfig:
    """The ``TrainConfig`` of ``layers`` (later wins) over the dataclass defaults."""
    return from_sections(_merge(layer.sections for layer in layers))


@dataclass(frozen=True)
class Setting:
    """One resolved key: its value, the layer that set it and the values of the layers it overrode."""

    key: str
    """``section.key``."""
    value: Any
    source: str
    """A ``ConfigLayer.name`` or ``default``."""
    overrides: tuple[tuple[str, Any], ...] = ()
    """``(layer, value)`` of every lower layer (the default included) that had another value, lowest first."""


def explain_config(cfg: TrainConfig, layers: Iterable[ConfigLayer]) -> list[Setting]:
    """Every key of ``cfg`` with the layer it came from (``cfg`` must be the resolution of ``layers``)."""
    setters: dict[str, list[tuple[str, Any]]] = {}
    for layer in layers:
        for section, values in layer.sections.items():
            for key, value in values.items():
                setters.setdefault(f"{section}.{key}", []).append((layer.name, value))
    defaults = from_sections({"run": {"algo": cfg.run.algo}}).to_dict()
    types = {name: _field_types(cls) for name, cls in SECTION_TYPES.items()}
    types[ALGO_SECTION] = _field_types(algorithm_spec(cfg.run.algo).config_cls)

    def typed(section: str, key: str, raw: Any) -> Any:  # "1e-3" from --set and 0.001 from a file are one value
        try:
            return _coerce(raw, types[section][key], f"{section}.{key}")
        except ConfigValueError:
            return raw

    out = []
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            chain = [(DEFAULT_LAYER, defaults[section][key]), *setters.get(f"{section}.{key}", [])]
            source = chain[-1][0]
            shadowed = tuple((name, typed(section, key, v)) for name, v in chain[:-1]
                             if typed(section, key, v) != value)
            out.append(Setting(f"{section}.{key}", value, source, shadowed))
    return out


SOURCES_FILE = "config_sources.json"
"""Beside a run's ``config.json``: the layer of every key not at its default (``marlctl config show RUN_DIR``)."""


def sources_record(settings: Iterable[Setting]) -> dict[str, Any]:
    """What ``SOURCES_FILE`` holds: the precedence rule and, per key not at its default, its layer and overrides."""
    return {"precedence": PRECEDENCE,
            "settings": {s.key: {"source": s.source, "overrides": [list(o) for o in s.overrides]}
                         for s in settings if s.source != DEFAULT_LAYER}}


def explain_run_config(cfg: TrainConfig, record: dict[str, Any] | None) -> list[Setting]:
    """The settings of an existing run from its ``SOURCES_FILE`` record; without one (a run made before it
    existed) every key that differs from its default is attributed to ``config.json``."""
    known = (record or {}).get("settings", {})
    defaults = from_sections({"run": {"algo": cfg.run.algo}}).to_dict()
    out = []
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            name, default = f"{section}.{key}", defaults[section][key]
            if name in known:
                entry = known[name]
                out.append(Setting(name, value, str(entry["source"]), tuple(tuple(o) for o in entry["overrides"])))
            elif value != default:
                out.append(Setting(name, value, "config.json", ((DEFAULT_LAYER, default),)))
            else:
                out.append(Setting(name, value, DEFAULT_LAYER))
    return out


def check_against_env(cfg: TrainConfig, spec: EnvSpec) -> list[str]:
    """Warnings about choices that do not suit this environment (also issued as ``ConfigWarning``)."""
    messages: list[str] = []
    if cfg.learner.td_lambda > 0 and cfg.learner.n_step > 1:
        raise ConfigValueError("learner.td_lambda and learner.n_step > 1 are exclusive; set one of them")
    if not 0.0 <= cfg.learner.td_lambda <= 1.0:
        raise ConfigValueError(f"learner.td_lambda={cfg.learner.td_lambda} must be in [0, 1]")
    if cfg.env.num_envs < 1 or cfg.run.steps < 1 or cfg.replay.batch_size < 1 or cfg.replay.capacity < 1:
        raise ConfigValueError("env.num_envs, run.steps, replay.batch_size and replay.capacity must be >= 1")
    if cfg.replay.batch_size > cfg.replay.capacity:
        raise ConfigValueError(f"replay.batch_size={cfg.replay.batch_size} exceeds replay.capacity={cfg.replay.capacity}")
    if not cfg.agent.recurrent and not spec.fully_observable:
        messages.append(f"agent.recurrent=false on {spec.env_id}, which is partially observable: agents see "
                        "only their current observation")
    env_warnings = getattr(cfg.algo, "env_warnings", None)
    if callable(env_warnings):
        messages.extend(env_warnings(spec))
    for message in messages:
        warnings.warn(message, ConfigWarning, stacklevel=2)
    return messages
