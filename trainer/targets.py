"""Learning targets of value methods: double-Q next values, one-step / n-step and TD(lambda) returns.

Convention for ``[B, T]`` tensors: ``reward[t]`` and ``terminated[t]`` belong to the transition taken
at ``t``; ``v_next[t]`` is the (target) value of the state reached by it; ``filled[t]`` marks real
transitions. A terminated episode does not bootstrap; a truncated one bootstraps from ``v_next``.
``td_lambda_returns`` (backward recursion, used in training) and ``td_lambda_returns_forward``
(the forward view as an explicit mixture of n-step returns) are independent implementations that
must agree (tests/test_td_lambda.py).
"""
from __future__ import annotations

import torch
from marlctl.agents.recurrent import masked_greedy


def greedy_next_values(
    target_q_BTNA: torch.Tensor, select_q_BTNA: torch.Tensor, avail_BTNA: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Double Q: pick each agent's greedy available action with ``select_q`` (the online net; pass the
    target net's values for plain Q-learning) and evaluate it with ``target_q``.
    Returns values ``[B, T, N]`` and actions ``[B, T, N]``."""
    actions_BTN = masked_greedy(select_q_BTNA, avail_BTNA)
    values_BTN = target_q_BTNA.gather(-1, actions_BTN.unsqueeze(-1)).squeeze(-1)
    return values_BTN, actions_BTN


def one_step_targets(reward_BT: torch.Tensor, terminated_BT: torch.Tensor, v_next_BT: torch.Tensor,
                     gamma: float) -> torch.Tensor:
    """``y = r + gamma * (1 - terminated) * v_next`` ``[B, T]``."""
    return reward_BT + gamma * (1.0 - terminated_BT.float()) * v_next_BT


def n_step_returns(reward_BT: torch.Tensor, terminated_BT: torch.Tensor, filled_BT: torch.Tensor,
                   v_next_BT: torch.Tensor, gamma: float, n: int) -> torch.Tensor:
    """``G^(n)_t = sum_{k<n} gamma^k r_{t+k} + gamma^n v(s_{t+n})``, cut at the episode's end
    (where it bootstraps only if truncated). Zero on padding. ``[B, T]``."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    B, T = reward_BT.shape
    length_B1 = filled_BT.sum(dim=1, keepdim=True)  # [B, 1] episode lengths
    t_1T = torch.arange(T, device=reward_BT.device).unsqueeze(0)  # [1, T]
    g_BT = torch.zeros_like(reward_BT)
    for k in range(n):
        idx_BT = (t_1T + k).expand(B, T)
        valid_BT = idx_BT < length_B1
        g_BT = g_BT + gamma**k * reward_BT.gather(1, idx_BT.clamp(max=T - 1)) * valid_BT
    last_BT = torch.minimum((t_1T + n - 1).expand(B, T), (length_B1 - 1).clamp(min=0))  # bootstrap index
    steps_BT = (last_BT - t_1T + 1).clamp(min=1).to(reward_BT.dtype)
    boot_BT = (1.0 - terminated_BT.float().gather(1, last_BT)) * v_next_BT.gather(1, last_BT)
    return (g_BT + gamma**steps_BT * boot_BT) * filled_BT


def td_lambda_returns(reward_BT: torch.Tensor, terminated_BT: torch.Tensor, filled_BT: torch.Tensor,
                      v_next_BT: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """TD(lambda) returns by the backward recursion
    ``G_t = r_t + gamma (1 - term_t) [(1 - lam) v_next_t + lam G_{t+1}]``, with ``G_{t+1} := v_next_t``
    at an episode's last step. Zero on padding. ``[B, T]``."""
    B, T = reward_BT.shape
    term_BT = terminated_BT.float()
    filled = filled_BT.bool()
    last_BT = filled & ~torch.cat([filled[:, 1:], torch.zeros_like(filled[:, :1])], dim=1)
    g_BT = torch.zeros_like(reward_BT)
    g_next_B = v_next_BT[:, T - 1]
    for t in reversed(range(T)):
        tail_B = torch.where(last_BT[:, t], v_next_BT[:, t], g_next_B)
        g_t = reward_BT[:, t] + gamma * (1.0 - term_BT[:, t]) * ((1.0 - lam) * v_next_BT[:, t] + lam * tail_B)
        g_BT[:, t] = g_t * filled[:, t]
        g_next_B = g_BT[:, t]
    return g_BT


def td_lambda_returns_forward(reward_BT: torch.Tensor, terminated_BT: torch.Tensor, filled_BT: torch.Tensor,
                              v_next_BT: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """TD(lambda) returns by the forward view: ``G^lam_t = (1 - lam) sum_{n=1}^{L-t-1} lam^(n-1) G^(n)_t
    + lam^(L-t-1) G^(L-t)_t`` over the n-step returns (reference implementation; O(T^2))."""
    B, T = reward_BT.shape
    length_B = filled_BT.sum(dim=1)  # [B]
    nstep = [n_step_returns(reward_BT, terminated_BT, filled_BT, v_next_BT, gamma, n) for n in range(1, T + 1)]
    g_BT = torch.zeros_like(reward_BT)
    for b in range(B):
        L = int(length_B[b])
        for t in range(L):
            remaining = L - t
            total = sum((1 - lam) * lam ** (n - 1) * nstep[n - 1][b, t] for n in range(1, remaining))
            g_BT[b, t] = total + lam ** (remaining - 1) * nstep[remaining - 1][b, t]
    return g_BT
