"""ReMIX's regret-minimizing projection weights (ReMIX Theorem 1 / Algorithm 1 line 19), as a pure function.

For a transition with Q_tot <= y (an underestimate of the target y = B* Q*_{k-1})::

    w  ~  (y - Q_tot)                           Bellman error
        * exp(Q* - Q_tot)                       value underestimation
        * (sum_j (1 - pi^j) / f'_{s,Q^j} - 1)   gradient of the monotonic mixer (f' = dQ_tot/dQ^j)
        * d^pi(s, u) / mu(s, u)                 on-policiness of the transition

and a small constant for an overestimate (Q_tot > y). Theorem 1 normalizes by Z*, fixed by the
constraint ``E_mu[w] = 1``; we estimate it on the batch, ``Z = mean(E)`` over real rows
(``normalization = "mean"``), then map into ``[w_min, 1]`` as §4.3/§5.4 do: ``w = clip(E / Z, w_min, 1)``
for underestimates and ``w_min`` (the paper's small constant) for overestimates. ``"max"`` instead
maps ``w_min + (1 - w_min) E / max(E)`` (proportional to E, but one outlier pushes the rest to w_min).
Each of the four factors can be switched off (replaced by 1) for the §5.5 ablations; the
Q_tot <= y case split (the KKT slackness condition) stays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class RemixWeightConfig:
    """How ReMIX turns its four factors into projection weights."""

    w_min: float = 0.1
    """Lower end of the weight range; overestimates get exactly this (ReMIX §5.4: 0.1 works best)."""
    bellman_error: bool = True
    """Use the Bellman-error factor ``y - Q_tot`` (ablation switch, §5.5)."""
    underestimation: bool = True
    """Use the value-underestimation factor ``exp(Q* - Q_tot)`` (ablation switch)."""
    mixer_gradient: bool = True
    """Use the mixer-gradient factor ``sum_j (1 - pi^j) / f'_j - 1`` (ablation switch)."""
    on_policy: bool = True
    """Use the on-policiness factor ``d^pi / mu`` (ablation switch)."""
    normalization: Literal["mean", "max"] = "mean"
    """Estimate of Z*: the batch mean of E (Theorem 1's E_mu[w] = 1), or its maximum."""
    temperature: float = 1.0
    """Temperature of the agents' Boltzmann policies pi^j over their utilities."""
    grad_floor: float = 1e-3
    """Smallest mixer gradient f' used in 1/f' (a monotonic mixer's f' >= 0 can be ~0)."""
    max_gap: float = 10.0
    """Clip of ``Q* - Q_tot`` inside exp() so one wild estimate cannot flatten the rest of the batch."""

    def __post_init__(self) -> None:
        if not 0.0 < self.w_min <= 1.0:
            raise ValueError(f"remix w_min must be in (0, 1], got {self.w_min}")
        if self.normalization not in ("mean", "max"):
            raise ValueError(f"remix normalization={self.normalization!r}; valid: mean, max")
        if self.temperature <= 0 or self.grad_floor <= 0 or self.max_gap <= 0:
            raise ValueError("remix temperature, grad_floor and max_gap must be > 0")


@dataclass
class RemixWeights:
    """The weights ``[B]`` and each factor ``[B]`` (1 where switched off), for logging and tests."""

    w: torch.Tensor
    raw: torch.Tensor
    """E before mapping into [w_min, 1] (0 for overestimates)."""
    underestimate: torch.Tensor
    """bool, Q_tot <= y."""
    bellman_error: torch.Tensor
    underestimation: torch.Tensor
    mixer_gradient: torch.Tensor
    on_policy: torch.Tensor


def boltzmann_chosen_prob(
    utilities_BNA: torch.Tensor, actions_BN: torch.Tensor, avail_BNA: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """pi^j(u_j | tau_j) ``[B, N]``: each agent's Boltzmann probability of its taken action (available ones only).

    A row with no available action (episode padding) is treated as all-available, so it stays finite."""
    avail_BNA = avail_BNA | ~avail_BNA.any(dim=-1, keepdim=True)
    logits = (utilities_BNA / temperature).masked_fill(~avail_BNA, float("-inf"))
    return torch.softmax(logits, dim=-1).gather(-1, actions_BN.long().unsqueeze(-1)).squeeze(-1)


def remix_weights(
    q_tot_B: torch.Tensor,
    y_B: torch.Tensor,
    q_star_B: torch.Tensor,
    pi_BN: torch.Tensor,
    mixer_grad_BN: torch.Tensor,
    on_policy_B: torch.Tensor,
    config: RemixWeightConfig,
    valid_B: torch.Tensor | None = None,
) -> RemixWeights:
    """ReMIX projection weights for a batch of transitions (no gradient flows through them).

    ``q_tot_B`` mixer output for the taken joint action; ``y_B`` the target B* Q*_{k-1};
    ``q_star_B`` the unrestricted Q* at the taken joint action; ``pi_BN`` each agent's Boltzmann
    probability of its taken action; ``mixer_grad_BN`` dQ_tot/dQ^j; ``on_policy_B`` the estimate of
    d^pi/mu; ``valid_B`` (bool) marks real rows: padded ones get raw 0 (weight w_min) and do not set
    the batch maximum, whatever garbage their inputs hold.
    """
    with torch.no_grad():
        q_tot_B, y_B, q_star_B = q_tot_B.detach(), y_B.detach(), q_star_B.detach()
        ones_B = torch.ones_like(q_tot_B)
        underestimate_B = q_tot_B <= y_B
        bellman_error_B = (y_B - q_tot_B).clamp(min=0.0) if config.bellman_error else ones_B
        gap_B = (q_star_B - q_tot_B).clamp(-config.max_gap, config.max_gap)
        underestimation_B = torch.exp(gap_B) if config.underestimation else ones_B
        if config.mixer_gradient:
            inv_grad_BN = (1.0 - pi_BN.detach()) / mixer_grad_BN.detach().clamp(min=config.grad_floor)
            mixer_gradient_B = (inv_grad_BN.sum(dim=-1) - 1.0).clamp(min=0.0)  # weights are non-negative
        else:
            mixer_gradient_B = ones_B
        on_policy_B = on_policy_B.detach().to(q_tot_B.dtype) if config.on_policy else ones_B

        raw_B = bellman_error_B * underestimation_B * mixer_gradient_B * on_policy_B
        keep_B = underestimate_B if valid_B is None else underestimate_B & valid_B  # padded rows: raw 0
        raw_B = torch.where(keep_B, raw_B, torch.zeros_like(raw_B))
        tiny = torch.finfo(raw_B.dtype).tiny
        if config.normalization == "mean":
            n_valid = raw_B.numel() if valid_B is None else valid_B.sum().clamp(min=1)
            z = (raw_B.sum() / n_valid).clamp(min=tiny)  # Z* from E_mu[w] = 1
            w_B = (raw_B / z).clamp(config.w_min, 1.0)
        else:
            w_B = config.w_min + (1.0 - config.w_min) * raw_B / raw_B.max().clamp(min=tiny)
        w_B = torch.where(keep_B, w_B, torch.full_like(w_B, config.w_min))
        return RemixWeights(
            w=w_B,
            raw=raw_B,
            underestimate=underestimate_B,
            bellman_error=bellman_error_B,
            underestimation=underestimation_B,
            mixer_gradient=mixer_gradient_B,
            on_policy=on_policy_B,
        )


def mixer_gradient(q_tot_B: torch.Tensor, q_agents_BN: torch.Tensor) -> torch.Tensor:
    """f'_{s,Q^j} = dQ_tot/dQ^j ``[B, N]`` by a second autograd pass: the reference for any mixer.

    ReMIX itself takes QMIX's f' in closed form (``QMixer.forward_with_gradient``, Lemma 1), which the
    tests check against this.

    ``q_agents_BN`` must be an input of the graph that produced ``q_tot_B`` and require grad;
    rows are independent, so the gradient of the sum gives every row's own derivative.
    """
    (grad_BN,) = torch.autograd.grad(q_tot_B.sum(), q_agents_BN, retain_graph=True)
    return grad_BN
