"""WQMIX's unrestricted joint value Q*: a feed-forward network of the state and the agents' utilities.

Unlike QMIX it has no monotonicity constraint, so it can represent any joint action-value; it is
trained with the plain (unweighted) TD loss and provides the targets QMIX is regressed onto.
"""
from __future__ import annotations

import torch
from torch import nn


class CentralQ(nn.Module):
    """Q*(s, u) = MLP([s, q_1(u_1), ..., q_N(u_N)]) with ReLU hidden layers of width ``embed_dim``."""

    def __init__(self, n_agents: int, state_dim: int, embed_dim: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state_dim + n_agents, embed_dim), nn.ReLU(),
            nn.Linear(embed_dim, embed_dim), nn.ReLU(),
            nn.Linear(embed_dim, 1),
        )

    def forward(self, q_BTN: torch.Tensor, state_BTS: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state_BTS, q_BTN], dim=-1)).squeeze(-1)  # [B, T]
