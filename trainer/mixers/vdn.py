"""VDN's mixer: the joint value is the sum of the agents' values, Q_tot = sum_i Q_i."""
from __future__ import annotations

import torch
from torch import nn


class VDNMixer(nn.Module):
    """Additive value decomposition (no parameters)."""

    def forward(self, q_BTN: torch.Tensor, state_BTS: torch.Tensor) -> torch.Tensor:
        return q_BTN.sum(dim=-1)  # [B, T]
