"""The environment registry: parses env ids and builds environments, importing family modules lazily.

An id is ``family``, ``family:scenario`` or either followed by ``key=value`` options after
commas: ``smax:3m``, ``matrix:qtran``, ``predator_prey:agents=2,prey=1,grid=5,punishment=0.5``,
``grf:academy_3_vs_1_with_keeper,reward=scoring+checkpoints``. A family module is imported
only when one of its ids is used, so a matrix game never imports JAX, StarCraft or GRF.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import types
import typing
from typing import Any, TypeVar

from marlctl.envs.base import BatchedEnv, Env, EnvFamily, EnvSpec
from marlctl.envs.errors import BackendUnavailableError, EnvError, EnvOptionError, UnknownEnvError

# Family name -> module implementing it (see EnvFamily). Order = the order of `marlctl envs list`.
FAMILY_MODULES: dict[str, str] = {
    "smax": "marlctl.envs.smax",
    "smac": "marlctl.envs.smac",
    "grf": "marlctl.envs.grf",
    "matrix": "marlctl.envs.matrix",
    "hallway": "marlctl.envs.hallway",
    "predator_prey": "marlctl.envs.predator_prey",
    "predator_prey_qtran": "marlctl.envs.predator_prey_qtran",
    "gaussian_squeeze": "marlctl.envs.gaussian_squeeze",
    "pettingzoo": "marlctl.envs.pettingzoo",
}


def parse_env_id(env_id: str) -> tuple[str, str | None, dict[str, str]]:
    """Split an env id into ``(family, scenario or None, options)``; raises UnknownEnvError/EnvOptionError."""
    if not isinstance(env_id, str) or not env_id.strip():
        raise UnknownEnvError(f"env id must be a non-empty string, got {env_id!r}; {_valid_families()}")
    family, _, rest = env_id.strip().partition(":")
    family = family.strip()
    if family not in FAMILY_MODULES:
        raise UnknownEnvError(f"unknown environment family {family!r} in {env_id!r}; {_valid_families()}")
    scenario: str | None = None
    options: dict[str, str] = {}
    if rest.strip():
        for i, part in enumerate(p.strip() for p in rest.split(",")):
            if not part:
                raise EnvOptionError(f"empty item in {env_id!r}: remove the stray comma")
            if "=" not in part:
                if i != 0:
                    raise EnvOptionError(
                        f"{part!r} in {env_id!r} is not key=value; only the first item after ':' may be a scenario"
                    )
                scenario = part
                continue
            key, _, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not key or not value:
                raise EnvOptionError(f"option {part!r} in {env_id!r} needs a key and a value (key=value)")
            if key in options:
                raise EnvOptionError(f"option {key!r} given twice in {env_id!r}")
            options[key] = value
    return family, scenario, options


def format_env_id(family: str, scenario: str | None, options: dict[str, str]) -> str:
    """The canonical id string of ``(family, scenario, options)`` (inverse of :func:`parse_env_id`)."""
    items = ([scenario] if scenario else []) + [f"{k}={v}" for k, v in options.items()]
    return f"{family}:{','.join(items)}" if items else family


def _valid_families() -> str:
    return "valid families: " + ", ".join(FAMILY_MODULES)


def _family_module(family: str) -> types.ModuleType:
    module_name = FAMILY_MODULES[family]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise BackendUnavailableError(
                f"environment family {family!r} is registered but its module {module_name} is not in this install"
            ) from None
        raise


def make_env(env_id: str) -> Env:
    """A single environment for ``env_id`` (call ``reset(seed)`` before ``step``)."""
    family, scenario, options = parse_env_id(env_id)
    return _family_module(family).make(scenario, options)


def make_batched_env(env_id: str, num_envs: int) -> BatchedEnv:
    """``num_envs`` environments for ``env_id`` stepped together, auto-resetting finished ones."""
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise EnvError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    family, scenario, options = parse_env_id(env_id)
    return _family_module(family).make_batched(scenario, options, num_envs)


def env_spec(env_id: str) -> EnvSpec:
    """The spec of ``env_id`` (builds the environment once and closes it)."""
    env = make_env(env_id)
    try:
        return env.spec
    finally:
        env.close()


def list_families() -> list[tuple[EnvFamily, bool, str]]:
    """Every registered family with whether it can run here and why not (imports no backend)."""
    rows: list[tuple[EnvFamily, bool, str]] = []
    for name, module_name in FAMILY_MODULES.items():
        try:
            family: EnvFamily = _family_module(name).FAMILY
        except BackendUnavailableError as exc:
            rows.append((EnvFamily(name=name, summary="(module not available)"), False, str(exc)))
            continue
        backend = family.backend_module
        # A family that knows best what it needs (smac: the git package, the game, SC2PATH) says so itself;
        # a bare "needs Python package 'smac'" would point users at the unrelated PyPI package of that name.
        note = getattr(importlib.import_module(module_name), "availability", None)
        if callable(note):
            rows.append((family, *note()))
        elif backend is None:
            rows.append((family, True, "pure NumPy"))
        elif importlib.util.find_spec(backend.split(".")[0]) is None:
            rows.append((family, False, f"needs Python package {backend!r} (not installed)"))
        else:
            rows.append((family, True, f"backend {backend} installed"))
    return rows


C = TypeVar("C")


def config_from_options(cls: type[C], family: str, options: dict[str, str], **fixed: Any) -> C:
    """Build the dataclass ``cls`` from string ``options`` (keys = field names), converting by field type.

    Unknown keys and unparsable values raise EnvOptionError naming the valid options; range
    checks belong in ``cls.__post_init__`` (raising EnvOptionError).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in fixed}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = dict(fixed)
    for key, raw in options.items():
        if key not in fields:
            valid = ", ".join(f"{n} (default {_default(f)})" for n, f in fields.items()) or "none"
            raise EnvOptionError(f"unknown option {key!r} for {family!r}; valid options: {valid}")
        kind = hints[key]
        try:
            if kind is bool:
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                kwargs[key] = raw.lower() in ("true", "1", "yes")
            elif kind in (int, float, str):
                kwargs[key] = kind(raw)
            else:
                raise TypeError(f"unsupported option type {kind}")
        except ValueError:
            raise EnvOptionError(
                f"option {key}={raw!r} for {family!r} is not a valid {getattr(kind, '__name__', kind)}"
            ) from None
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> str:
    return repr(f.default) if f.default is not dataclasses.MISSING else "required"
