"""Generalized advantage estimation (GAE) and value targets, batched over environments."""
from __future__ import annotations

import torch


def gae(
    rewards_TB: torch.Tensor,
    values_TB: torch.Tensor,
    next_values_TB: torch.Tensor,
    terminated_TB: torch.Tensor,
    ended_TB: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages ``A`` and value targets ``A + V`` (both ``[T, B]``) over a rollout of ``T`` steps.

    ``next_values_TB[t]`` is ``V(s_{t+1})`` of the step's own successor: the next step's value
    inside an episode, the value of the final observation where the episode was truncated
    (time limit: bootstrap), anything where it terminated (masked by ``terminated_TB``) and the
    bootstrap value after the last step of the rollout. ``ended_TB`` (terminated or truncated)
    cuts the eligibility trace so an advantage never leaks across an episode boundary::

        delta_t = r_t + gamma * (1 - term_t) * V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - ended_t) * A_{t+1}

    The loop runs over ``T`` only; every step is one vectorized operation over ``B``.
    """
    if not (rewards_TB.shape == values_TB.shape == next_values_TB.shape == terminated_TB.shape == ended_TB.shape):
        raise ValueError(
            "gae: rewards, values, next_values, terminated and ended must share one [T, B] shape, got "
            f"{[tuple(x.shape) for x in (rewards_TB, values_TB, next_values_TB, terminated_TB, ended_TB)]}"
        )
    not_term_TB = 1.0 - terminated_TB.to(values_TB.dtype)
    not_ended_TB = 1.0 - ended_TB.to(values_TB.dtype)
    delta_TB = rewards_TB + gamma * not_term_TB * next_values_TB - values_TB
    adv_TB = torch.zeros_like(values_TB)
    running_B = torch.zeros_like(values_TB[0])
    for t in range(rewards_TB.shape[0] - 1, -1, -1):
        running_B = delta_TB[t] + gamma * lam * not_ended_TB[t] * running_B
        adv_TB[t] = running_B
    return adv_TB, adv_TB + values_TB


def interleave_virtual_steps(
    rewards_TB: torch.Tensor,
    values_TBN: torch.Tensor,
    next_first_values_TB: torch.Tensor,
    terminated_TB: torch.Tensor,
    ended_TB: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay ``T`` env steps of ``N`` agents out as ``T*N`` steps of the transformed MDP (TAD, Algorithm 1).

    Virtual step ``(t, i)`` is agent ``i`` choosing its action in state ``(s_t, a_<i)``; its value is
    ``values_TBN[t, :, i]``. Only the last virtual step ``(t, N-1)`` carries the env reward and the
    env's termination / truncation; its successor is ``(t+1, 0)`` whose value is
    ``next_first_values_TB[t]`` (the first agent's value in ``s_{t+1}``, or in the final state where
    truncated). Returns ``rewards, values, next_values, terminated, ended``, each ``[T*N, B]``.
    """
    T, B, N = values_TBN.shape
    zeros_TBN = torch.zeros_like(values_TBN)
    rewards_TBN = zeros_TBN.clone()
    rewards_TBN[:, :, -1] = rewards_TB
    next_values_TBN = torch.cat([values_TBN[:, :, 1:], next_first_values_TB[:, :, None]], dim=2)
    terminated_TBN = torch.zeros_like(values_TBN, dtype=torch.bool)
    terminated_TBN[:, :, -1] = terminated_TB
    ended_TBN = torch.zeros_like(values_TBN, dtype=torch.bool)
    ended_TBN[:, :, -1] = ended_TB

    def flat(x_TBN: torch.Tensor) -> torch.Tensor:  # [T, B, N] -> [T*N, B], time-major
        return x_TBN.permute(0, 2, 1).reshape(T * N, B)

    return flat(rewards_TBN), flat(values_TBN), flat(next_values_TBN), flat(terminated_TBN), flat(ended_TBN)


def deinterleave(x_VB: torch.Tensor, n_agents: int) -> torch.Tensor:
    """Inverse of the layout of :func:`interleave_virtual_steps`: ``[T*N, B] -> [T, B, N]``."""
    V, B = x_VB.shape
    return x_VB.reshape(V // n_agents, n_agents, B).permute(0, 2, 1)
