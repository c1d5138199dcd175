"""QTRAN's joint networks: Q_jt / V_jt from summed per-agent features (base) and the counterfactual Q_jt (alt).

QTRAN §3.2: the joint action-value network shares the agents' lower layers and combines their hidden
features by summation, ``h_i(tau_i, u_i) = [h_Q,i(tau_i, u_i), h_V,i(tau_i)]``; Q_jt reads
``sum_i h_Q,i`` and V_jt reads ``sum_i h_V,i``. §3.4: QTRAN-alt's counterfactual joint network gives
``Q_jt(tau, ., u_-i)`` for every agent i and every action in one pass from ``h_V,i(tau_i)`` and
``sum_{j != i} h_Q,j(tau_j, u_j)``. Appendix C: two hidden layers, ReLU, width 32 (matrix game) or
64 (predator-prey). The agents' hidden states ``[B, N, H]`` come in undetached, so the joint losses
also shape the shared lower layers (the paper's parameter sharing).
"""
from __future__ import annotations

import torch
from torch import nn


def _mlp(in_dim: int, width: int, out_dim: int) -> nn.Sequential:
    """Two hidden ReLU layers of ``width`` (appendix C), linear output."""
    return nn.Sequential(
        nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out_dim)
    )


class _AgentFeatures(nn.Module):
    """Per-agent features ``h_Q,i(tau_i, u_i)`` ``[B, N, E]`` and ``h_V,i(tau_i)`` ``[B, N, E]``."""

    def __init__(self, hidden_dim: int, n_actions: int, embed_dim: int) -> None:
        super().__init__()
        self.h_q = nn.Sequential(nn.Linear(hidden_dim + n_actions, embed_dim), nn.ReLU())
        self.h_v = nn.Sequential(nn.Linear(hidden_dim, embed_dim), nn.ReLU())

    def forward(self, hidden_BNH: torch.Tensor, actions_BNA: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.h_q(torch.cat([hidden_BNH, actions_BNA], dim=-1)), self.h_v(hidden_BNH)


class QtranJointBase(nn.Module):
    """QTRAN-base: ``Q_jt(tau, u)`` ``[B]`` and ``V_jt(tau)`` ``[B]`` from summed agent features.

    ``state_dim > 0`` also feeds the global state to both heads (a common practical extension,
    off by default: the paper's networks read only the agents' features).
    """

    def __init__(self, hidden_dim: int, n_actions: int, embed_dim: int = 64, state_dim: int = 0) -> None:
        super().__init__()
        self.state_dim = state_dim
        self.features = _AgentFeatures(hidden_dim, n_actions, embed_dim)
        self.q_jt = _mlp(embed_dim + state_dim, embed_dim, 1)
        self.v_jt = _mlp(embed_dim + state_dim, embed_dim, 1)

    def forward(
        self, hidden_BNH: torch.Tensor, actions_BNA: torch.Tensor, state_BS: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``actions_BNA`` is the one-hot joint action (float)."""
        h_q_BNE, h_v_BNE = self.features(hidden_BNH, actions_BNA)
        q_in, v_in = h_q_BNE.sum(dim=1), h_v_BNE.sum(dim=1)  # [B, E] sums over agents
        if self.state_dim:
            q_in, v_in = torch.cat([q_in, state_BS], dim=-1), torch.cat([v_in, state_BS], dim=-1)
        return self.q_jt(q_in).squeeze(-1), self.v_jt(v_in).squeeze(-1)


class QtranJointAlt(nn.Module):
    """QTRAN-alt: counterfactual ``Q_jt(tau, a, u_-i)`` ``[B, N, A]`` for every agent i and action a, and ``V_jt`` ``[B]``.

    One shared counterfactual head with the agent id one-hot stands in for the paper's "each agent
    has a counterfactual joint network" (parameter sharing across agents, as for the agent networks).
    """

    def __init__(
        self, hidden_dim: int, n_actions: int, n_agents: int, embed_dim: int = 64, state_dim: int = 0
    ) -> None:
        super().__init__()
        self.n_agents, self.state_dim = n_agents, state_dim
        self.features = _AgentFeatures(hidden_dim, n_actions, embed_dim)
        self.q_jt = _mlp(2 * embed_dim + n_agents + state_dim, embed_dim, n_actions)
        self.v_jt = _mlp(embed_dim + state_dim, embed_dim, 1)

    def forward(
        self, hidden_BNH: torch.Tensor, actions_BNA: torch.Tensor, state_BS: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, N = hidden_BNH.shape[:2]
        h_q_BNE, h_v_BNE = self.features(hidden_BNH, actions_BNA)
        others_BNE = h_q_BNE.sum(dim=1, keepdim=True) - h_q_BNE  # sum_{j != i} h_Q,j(tau_j, u_j)
        agent_id_BNN = torch.eye(N, device=hidden_BNH.device).expand(B, N, N)
        q_in = [h_v_BNE, others_BNE, agent_id_BNN]
        v_in = h_v_BNE.sum(dim=1)  # [B, E]
        if self.state_dim:
            q_in.append(state_BS.unsqueeze(1).expand(B, N, self.state_dim))
            v_in = torch.cat([v_in, state_BS], dim=-1)
        return self.q_jt(torch.cat(q_in, dim=-1)), self.v_jt(v_in).squeeze(-1)
