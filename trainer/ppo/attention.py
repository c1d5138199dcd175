"""TAD-PPO's multi-head attention over the actions of the agents that precede each agent in the virtual order."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


class PrecedingActionAttention(nn.Module):
    """Multi-head attention (Sec. 5.2, Fig. 1): queries WQ from an MLP over agent ``i``'s hidden
    vector (its GRU output), keys WK and values V from MLPs over the one-hot actions ``a_<i`` of
    the agents before ``i`` in the virtual order (with each one's one-hot id, so the attention
    knows who chose what). ``n_heads`` heads (N_h) of dimension ``head_dim`` (D); the output is the
    heads concatenated, ``[.., N_h * D]``, and is zero for the first agent (nothing precedes it).
    Agent ``i``'s output depends on ``a_j`` for ``j < i`` only, which keeps the transformed MDP exact.
    """

    def __init__(
        self, query_dim: int, n_actions: int, n_agents: int, n_heads: int, head_dim: int, mlp_dim: int = 64
    ) -> None:
        super().__init__()
        if n_heads < 1 or head_dim < 1:
            raise ValueError(f"attention needs n_heads >= 1 and head_dim >= 1, got {n_heads}, {head_dim}")
        self.n_actions = n_actions
        self.n_agents = n_agents
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.out_dim = n_heads * head_dim
        self.query = _mlp(query_dim, mlp_dim, self.out_dim)
        self.key = _mlp(n_actions + n_agents, mlp_dim, self.out_dim)
        self.value = _mlp(n_actions + n_agents, mlp_dim, self.out_dim)

    def _keys_values(self, actions_BM: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, M, N_h, D]`` for the first ``M`` agents' actions ``[B, M]``."""
        B, M = actions_BM.shape
        ids_BM = torch.arange(M, device=actions_BM.device).expand(B, M)
        kv_in = torch.cat(
            [F.one_hot(actions_BM.clamp(min=0), self.n_actions), F.one_hot(ids_BM, self.n_agents)], dim=-1
        ).float()  # [B, M, A + N]
        k = self.key(kv_in).view(B, M, self.n_heads, self.head_dim)
        v = self.value(kv_in).view(B, M, self.n_heads, self.head_dim)
        return k, v

    def forward(self, x_BNH: torch.Tensor, actions_BN: torch.Tensor) -> torch.Tensor:
        """Every agent at once (training): ``x_BNH`` hidden vectors, ``actions_BN`` the joint action.

        Returns ``[B, N, N_h * D]``; row ``i`` attends to columns ``j < i`` only (causal mask)."""
        B, N, _ = x_BNH.shape
        q = self.query(x_BNH).view(B, N, self.n_heads, self.head_dim)  # [B, N, Nh, D]
        k, v = self._keys_values(actions_BN)  # [B, N, Nh, D]
        scores_BhNN = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(self.head_dim)
        preceding_NN = torch.ones(N, N, dtype=torch.bool, device=x_BNH.device).tril(diagonal=-1)
        scores_BhNN = scores_BhNN.masked_fill(~preceding_NN, -1e9)
        # The first agent's row is all masked: its (uniform) weights are zeroed, so its output is 0.
        weights_BhNN = scores_BhNN.softmax(dim=-1) * preceding_NN
        out = torch.einsum("bhij,bjhd->bihd", weights_BhNN, v)  # [B, N, Nh, D]
        return out.reshape(B, N, self.out_dim)

    def forward_agent(self, x_BH: torch.Tensor, preceding_actions_BM: torch.Tensor) -> torch.Tensor:
        """One agent ``i = M`` (sequential inference): ``x_BH`` its hidden vector, ``preceding_actions_BM``
        the ``M`` actions already chosen. Returns ``[B, N_h * D]`` (zeros when ``M == 0``)."""
        B, M = preceding_actions_BM.shape
        if M == 0:
            return x_BH.new_zeros(B, self.out_dim)
        q = self.query(x_BH).view(B, self.n_heads, self.head_dim)  # [B, Nh, D]
        k, v = self._keys_values(preceding_actions_BM)  # [B, M, Nh, D]
        weights_BhM = (torch.einsum("bhd,bjhd->bhj", q, k) / math.sqrt(self.head_dim)).softmax(dim=-1)
        return torch.einsum("bhj,bjhd->bhd", weights_BhM, v).reshape(B, self.out_dim)
