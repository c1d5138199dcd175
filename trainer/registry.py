"""The algorithm table: every trainable algorithm by name, imported lazily, and how a value method is built.

Adding an algorithm: write a module exposing an ``AlgorithmSpec`` and add ONE line to ``ALGORITHMS``.
A value method (a ``ValueLearner`` on the shared rollout + replay machinery) is declared with
``value_method(name, summary, learner_cls, options_cls)``; a policy method passes its own ``build``.
An options dataclass may define ``validate(self)`` (raise ``ConfigValueError``) and
``env_warnings(self, spec) -> list[str]`` (choices that do not suit the environment).

This module imports neither PyTorch nor any algorithm: ``marlctl train --help`` and ``config show``
list the table without loading a network.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from marlctl.trainer.errors import UnknownAlgorithmError

if TYPE_CHECKING:
    import torch
    from marlctl.envs.base import EnvSpec
    from marlctl.trainer.algorithm import Algorithm
    from marlctl.trainer.config import TrainConfig

# One line per algorithm: "name": "module:ATTRIBUTE", where ATTRIBUTE is an ``AlgorithmSpec``.
ALGORITHMS: dict[str, str] = {
    "vdn": "marlctl.trainer.learners.vdn_qmix:VDN",
    "qmix": "marlctl.trainer.learners.vdn_qmix:QMIX",
    "ow-qmix": "marlctl.trainer.learners.wqmix:OW_QMIX",
    "cw-qmix": "marlctl.trainer.learners.wqmix:CW_QMIX",
    "qtran-base": "marlctl.trainer.learners.qtran:QTRAN_BASE",
    "qtran-alt": "marlctl.trainer.learners.qtran:QTRAN_ALT",
    "remix": "marlctl.trainer.learners.remix:REMIX",
    "mappo": "marlctl.trainer.ppo.mappo:MAPPO_SPEC",
    "tad-ppo": "marlctl.trainer.ppo.tad_ppo:TAD_PPO_SPEC",
}


@dataclass(frozen=True)
class NoOptions:
    """This algorithm has no options of its own (the ``[algo]`` section must be empty)."""


@dataclass(frozen=True)
class AlgorithmSpec:
    """One trainable algorithm, as the run loop and the CLI see it."""

    name: str
    """Name used on the command line (``--algo``)."""
    summary: str
    """One line for help texts."""
    config_cls: type
    """Dataclass of the algorithm's own options (the ``[algo]`` config section)."""
    build: Callable[[TrainConfig, EnvSpec, torch.device], Algorithm]
    """Creates the algorithm (networks on ``device``, batched envs) from the resolved config."""
    kind: Literal["value", "policy"] = "value"
    """Value-factorization method (replay, epsilon-greedy) or policy-gradient method."""


def check_algorithm_name(name: str) -> None:
    """Raise ``UnknownAlgorithmError`` naming the valid algorithms unless ``name`` is registered (imports nothing)."""
    if name not in ALGORITHMS:
        raise UnknownAlgorithmError(f"unknown algorithm {name!r}; valid: {', '.join(sorted(ALGORITHMS))}")


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The ``AlgorithmSpec`` registered under ``name`` (imports its module)."""
    check_algorithm_name(name)
    module_name, attr = ALGORITHMS[name].split(":")
    spec = getattr(importlib.import_module(module_name), attr)
    if not isinstance(spec, AlgorithmSpec):
        raise TypeError(f"{ALGORITHMS[name]} is not an AlgorithmSpec")
    return spec


def value_method(name: str, summary: str, learner_cls: type, config_cls: type,
                 make_buffer: Callable[[TrainConfig, EnvSpec], Any] | None = None) -> AlgorithmSpec:
    """The ``AlgorithmSpec`` of a value method: ``ValueAlgorithm`` (rollouts + replay) around ``learner_cls``.

    ``make_buffer(cfg, spec)`` builds the episode replay buffer (default: the uniform ``ReplayBuffer``).
    """

    def build(cfg: TrainConfig, spec: EnvSpec, device: torch.device) -> Algorithm:
        from marlctl.trainer.value_algorithm import ValueAlgorithm  # torch is loaded only when a run starts

        return ValueAlgorithm(name, cfg, spec, device, learner_cls, make_buffer)

    return AlgorithmSpec(name=name, summary=summary, config_cls=config_cls, build=build, kind="value")
