"""A batched env step's arrays as PyTorch tensors on the learner's device: shared through DLPack where the env
computed them on that device (SMAX's JAX arrays: no copy, and on a GPU no host-to-device upload), copied
otherwise (NumPy envs reuse their buffers). The env still makes its host NumPy views (for the replay buffer
and the avail-mask check: with a GPU JAX a device-to-host copy per step); what DLPack saves is the way back.
``TRANSFERS`` counts which way each tensor came, so a run (and ``bench/gpu_check.sh``) can show that the
zero-copy path is the one taken.

Safety: JAX never donates these buffers (SMAX's jitted step does not donate its outputs), the DLPack capsule
keeps them alive while a tensor holds them, and every way back into JAX passes a host sync (the actions go to
NumPy), so a buffer is never freed while a PyTorch kernel may still read it."""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from marlctl.envs.base import BatchStep

TRANSFERS: Counter[str] = Counter()
"""Tensors made by ``step_tensor`` per path: ``dlpack`` (shared memory) or ``copy``."""


def _on(array: Any, device: torch.device) -> bool:
    """Whether a JAX array lives on ``device`` (the CPU, or the same CUDA GPU: ``cuda`` without an index is
    PyTorch's current device)."""
    try:
        (dev,) = array.devices()
    except (AttributeError, ValueError):  # not a JAX array, or sharded over several devices
        return False
    if device.type == "cpu":
        return dev.platform == "cpu"
    if device.type != "cuda" or dev.platform not in ("gpu", "cuda"):
        return False
    index = torch.cuda.current_device() if device.index is None else device.index
    return getattr(dev, "local_hardware_id", dev.id) == index


def step_tensor(step: BatchStep, name: str, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``step.<name>`` (``obs``, ``state`` or ``avail``) on ``device``: the env's own buffer through DLPack when
    it lives there (read-only by contract: never write into the result), else a copy of the NumPy array."""
    src = (step.device_views or {}).get(name)
    if src is not None and _on(src, device):
        out = torch.from_dlpack(src)
        if dtype is None or out.dtype == dtype:
            TRANSFERS["dlpack"] += 1
            return out
        TRANSFERS["copy"] += 1  # a cast is a copy
        return out.to(dtype)
    TRANSFERS["copy"] += 1
    return torch.tensor(getattr(step, name), device=device, dtype=dtype)
