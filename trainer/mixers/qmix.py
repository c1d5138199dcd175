"""QMIX's monotonic mixer: hypernetworks of the state produce non-negative mixing weights.

``forward`` gives Q_tot; ``forward_with_gradient`` also gives dQ_tot/dQ_j in closed form from the same
weights (ReMIX Lemma 1), without a second autograd pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _hypernet(state_dim: int, out_dim: int, hidden: int, layers: int) -> nn.Module:
    if layers == 1:
        return nn.Linear(state_dim, out_dim)
    if layers == 2:
        return nn.Sequential(nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
    raise ValueError(f"hypernet_layers={layers}; valid: 1, 2")


class QMixer(nn.Module):
    """Q_tot = w2^T elu(W1^T q + b1) + b2, with W1, w2 >= 0 so that dQ_tot/dQ_i >= 0 (monotonicity)."""

    def __init__(self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_embed: int = 64,
                 hypernet_layers: int = 2) -> None:
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim
        self.hyper_w1 = _hypernet(state_dim, n_agents * embed_dim, hypernet_embed, hypernet_layers)
        self.hyper_w2 = _hypernet(state_dim, embed_dim, hypernet_embed, hypernet_layers)
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        # The final bias is a small state-dependent value V(s); it does not need to be monotonic.
        self.hyper_b2 = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def _mix(self, q_BTN: torch.Tensor, state_BTS: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Q_tot ``[B, T]`` and what its gradient needs: W1 ``[R, N, E]``, the pre-activation ``[R, 1, E]``, w2 ``[R, E, 1]``."""
        B, T, N = q_BTN.shape
        s_RS = state_BTS.reshape(B * T, -1)  # R = B*T rows
        q_R1N = q_BTN.reshape(B * T, 1, N)
        # abs() keeps every mixing weight >= 0: with elu monotonic, Q_tot is monotonic in each Q_i,
        # so the per-agent argmax is the joint argmax (the IGM property QMIX relies on).
        w1_RNE = torch.abs(self.hyper_w1(s_RS)).view(-1, N, self.embed_dim)
        b1_R1E = self.hyper_b1(s_RS).view(-1, 1, self.embed_dim)
        pre_R1E = torch.bmm(q_R1N, w1_RNE) + b1_R1E
        w2_RE1 = torch.abs(self.hyper_w2(s_RS)).view(-1, self.embed_dim, 1)
        b2_R11 = self.hyper_b2(s_RS).view(-1, 1, 1)
        q_tot_R11 = torch.bmm(F.elu(pre_R1E), w2_RE1) + b2_R11
        return q_tot_R11.view(B, T), w1_RNE, pre_R1E, w2_RE1

    def forward(self, q_BTN: torch.Tensor, state_BTS: torch.Tensor) -> torch.Tensor:
        return self._mix(q_BTN, state_BTS)[0]

    def forward_with_gradient(self, q_BTN: torch.Tensor, state_BTS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q_tot ``[B, T]`` and f'_j = dQ_tot/dQ_j ``[B, T, N]`` (no grad) by ReMIX Lemma 1:
        ``f'_j = sum_k W1[j, k] elu'(z_k) w2[k]``, z = W1^T q + b1, elu'(z) = 1 for z > 0 else exp(z)."""
        q_tot_BT, w1_RNE, pre_R1E, w2_RE1 = self._mix(q_BTN, state_BTS)
        with torch.no_grad():
            pre_RE1 = pre_R1E.detach().transpose(1, 2)
            elu_prime_RE1 = torch.where(pre_RE1 > 0, torch.ones_like(pre_RE1), torch.exp(pre_RE1))
            grad_RN1 = torch.bmm(w1_RNE.detach(), elu_prime_RE1 * w2_RE1.detach())
        return q_tot_BT, grad_RN1.view(q_BTN.shape)
