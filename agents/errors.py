"""Errors about model files: checkpoints, agent bundles and exported ONNX agents."""
from __future__ import annotations


class ModelError(ValueError):
    """A checkpoint or model file that is missing, corrupt, tampered with or from another run/env."""
