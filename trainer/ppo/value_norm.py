"""MAPPO's value normalization: a running, debiased mean/variance of value targets (input statistics: ``running_stats``)."""
from __future__ import annotations

import torch
from torch import nn


class ValueNorm(nn.Module):
    """Normalizes value targets with an exponentially weighted, debiased running mean and variance.

    The critic regresses ``normalize(returns)``; its output is ``denormalize``-d before GAE. With
    ``beta`` close to 1 (MAPPO: 0.99999) the statistics are effectively a running average over all
    targets seen; the debiasing term removes the zero-initialisation bias, as in MAPPO's ``ValueNorm``.
    """

    def __init__(self, beta: float = 0.99999, epsilon: float = 1e-5, var_floor: float = 1e-2) -> None:
        super().__init__()
        if not 0.0 < beta < 1.0:
            raise ValueError(f"ValueNorm beta must be in (0, 1), got {beta}")
        self.beta = beta
        self.epsilon = epsilon
        self.var_floor = var_floor
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_mean_sq", torch.zeros(()))
        self.register_buffer("debiasing_term", torch.zeros(()))

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        denom = self.debiasing_term.clamp(min=self.epsilon)
        mean = self.running_mean / denom
        mean_sq = self.running_mean_sq / denom
        return mean, (mean_sq - mean**2).clamp(min=self.var_floor)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch of value targets (any shape) into the running statistics."""
        batch_mean = x.mean()
        batch_mean_sq = (x**2).mean()
        w = self.beta
        self.running_mean.mul_(w).add_(batch_mean * (1.0 - w))
        self.running_mean_sq.mul_(w).add_(batch_mean_sq * (1.0 - w))
        self.debiasing_term.mul_(w).add_(1.0 - w)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return (x - mean) / var.sqrt()

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return x * var.sqrt() + mean

