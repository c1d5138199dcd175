"""Errors raised by environments and the environment registry; each says what is valid."""
from __future__ import annotations


class EnvError(ValueError):
    """Base class of every environment error."""


class UnknownEnvError(EnvError):
    """An environment id whose family or scenario does not exist."""


class EnvOptionError(EnvError):
    """An unknown option, or a value out of range, in an environment id."""


class BackendUnavailableError(EnvError):
    """The environment exists but its backend (StarCraft II, GRF engine, JAX) is not installed."""


class InvalidActionError(EnvError):
    """An action outside ``[0, n_actions)`` or not allowed by the avail mask."""


class EpisodeOverError(EnvError):
    """``step`` called after the episode terminated or was truncated; call ``reset``."""


class PayoffFileError(EnvError):
    """A payoff-matrix file that cannot be read or does not describe a valid game."""
