"""A batched env step's arrays as PyTorch tensors on the learner's device: shared through DLPack where the env
computed them on that device (SMAX's JAX arrays: no copy, and on a GPU no trip through the host), copied
otherwise (NumPy envs reuse their buffers). ``TRANSFERS`` counts which way each tensor came, so a run (and
``bench/gpu_check.sh``) can show that the zero-copy path is the one taken."""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from marlctl.envs.base import BatchStep

TRANSFERS: Counter[str] = Counter()
"""Tensors made by ``step_tensor`` per path: ``dlpack`` (shared memory) or ``copy``."""


def _on(array: Any, device: torch.device) -> bool:
    """Whether a JAX array lives on ``device`` (the CPU, or the CUDA GPU of the same index)."""
    try:
        (dev,) = array.devices()
    except (AttributeError, ValueError):  # not a JAX array, or sharded over several devices
        return False
    if device.type == "cpu":
        return dev.platform == "cpu"
    return device.type == "cuda" and dev.platform in ("gpu", "cuda") and dev.id == (device.index or 0)


def step_tensor(step: BatchStep, name: str, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``step.<name>`` (``obs``, ``state`` or ``avail``) on ``device``: the env's own buffer through DLPack when
    it lives there (read-only by contract: never write into the result), else a copy of the NumPy array."""
    src = (step.device_views or {}).get(name)
    if src is not None and _on(src, device):
        out = torch.from_dlpack(src)
        TRANSFERS["dlpack"] += 1
        return out if dtype is None or out.dtype == dtype else out.to(dtype)
    TRANSFERS["copy"] += 1
    return torch.tensor(getattr(step, name), device=device, dtype=dtype)
