"""Exact running mean and variance of feature vectors, merged batch by batch (Chan et al.'s parallel variance).

One mechanism for every input normalization of the trainer: the value learners' global-state
normalization (``normalize``: standardize with ``eps`` and clip to ``±clip``) and MAPPO/TAD-PPO's
observation and state statistics (``mean_std``: the std floored at ``std_floor``, baked into the
networks and so into the exported actor). The statistics are buffers, checkpointed, never optimized.
"""
from __future__ import annotations

import torch
from torch import nn


class RunningMeanStd(nn.Module):
    """Running ``mean`` / ``var`` (float64) of rows ``[..., D]``, with a ``count`` of rows seen."""

    def __init__(self, dim: int, *, eps: float = 1e-4, clip: float = 10.0, std_floor: float = 0.1) -> None:
        super().__init__()
        self.eps, self.clip, self.std_floor = eps, clip, std_floor
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the statistics of the rows of ``x`` (any leading shape, last dim ``D``)."""
        rows = x.reshape(-1, self.mean.shape[0]).double()
        k = rows.shape[0]
        if k == 0:
            return
        b_mean, b_var = rows.mean(0), rows.var(0, unbiased=False)
        delta, total = b_mean - self.mean, self.count + k
        m2 = self.var * self.count + b_var * k + delta**2 * self.count * k / total
        self.mean.add_(delta * k / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / sqrt(var + eps)`` clipped to ``±clip``, in ``x``'s dtype."""
        return ((x - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x)

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 ``(mean, std)`` with the std floored at ``std_floor`` (for baking into a network)."""
        return self.mean.float(), self.var.sqrt().clamp(min=self.std_floor).float()
