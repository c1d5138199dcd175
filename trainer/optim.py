"""The optimizer of every trainer network, from the ``[optim]`` section: Adam or RMSprop."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from marlctl.trainer.config import OptimConfig
from torch import nn


def make_optimizer(cfg: OptimConfig, params: Iterable[nn.Parameter], lr: float | None = None) -> torch.optim.Optimizer:
    """Adam or RMSprop over ``params`` as configured; ``lr`` replaces ``cfg.lr`` (e.g. MAPPO's critic rate)."""
    rate = cfg.lr if lr is None else lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=rate, eps=cfg.eps)
    return torch.optim.RMSprop(params, lr=rate, alpha=cfg.rmsprop_alpha, eps=cfg.eps)
