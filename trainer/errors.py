"""Errors the trainer raises for bad input; each names what is wrong and what is valid."""
from __future__ import annotations


class TrainerError(ValueError):
    """Base class of every trainer user error (the CLI prints it and exits with code 2)."""


class UnknownAlgorithmError(TrainerError):
    """An algorithm name that is not in ``trainer.registry.ALGORITHMS``."""


class UnknownConfigKeyError(TrainerError):
    """A config section or key that does not exist (in a file, ``--set`` or a run's config.json)."""


class ConfigValueError(TrainerError):
    """A config value of the wrong type or out of range."""


class CheckpointError(TrainerError):
    """A checkpoint that cannot be resumed: missing, corrupt, or from another algorithm/environment."""


class RunDirError(TrainerError):
    """A run directory that cannot be used (exists without ``--resume``, or is not a run directory)."""
