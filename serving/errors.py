"""Errors of the serving side: model dirs, agent services, runners and episode records."""
from __future__ import annotations


class ServingError(RuntimeError):
    """Base class of user-facing serving errors (the CLI prints the message and exits with code 2)."""


class ModelDirError(ServingError):
    """A model dir (manifest + per-agent ONNX files) that is missing, malformed, tampered or truncated."""


class AgentServiceError(ServingError):
    """An agent service that cannot start, or that a client cannot use (wrong spec, unreachable)."""
