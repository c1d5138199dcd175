"""Errors of `marlctl deploy`: bad render inputs, model dirs that fail their checks, failed model fetches."""
from __future__ import annotations


class DeployError(ValueError):
    """Base class of user-facing deploy errors (the CLI prints the message and exits with code 2)."""


class RenderInputError(DeployError):
    """A render option that cannot produce valid manifests (empty image, bad name, --gpu with a cpu tag, ...)."""


class ModelCheckError(DeployError):
    """A model dir whose manifest is missing or invalid, or whose files do not match their pinned sha256."""


class ModelFetchError(DeployError):
    """A model that could not be downloaded from its URL, or whose downloaded bytes fail their sha256."""
