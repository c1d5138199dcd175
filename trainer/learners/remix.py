"""ReMIX (regret-minimizing projections onto monotonic value factorizations): QMIX + unrestricted Q* + optimal weights.

ReMIX Algorithm 1: the QMIX mixer's Q_tot is regressed onto ``y = B* Q*_{k-1}`` (the unrestricted Q*
of WQMIX, ``mixers.central.CentralQ`` over a central agent, trained unweighted) with the loss
``1/b sum w (Q_tot - y)^2`` (eq. 7), where ``w`` are the projection weights of Theorem 1 computed by
``remix_weights`` from four factors: Bellman error, value underestimation ``exp(Q* - Q_tot)``, the
mixer gradient ``sum_j (1 - pi^j) / f'_j - 1`` (f' in closed form by Lemma 1,
``QMixer.forward_with_gradient``) and on-policiness.

On-policiness ``d^pi / mu`` (§4.3: "an additional replay buffer storing the recently generated
transitions"): each update draws ``recent_batch_size`` episodes from the ``recent_episodes`` most
recently stored ones on top of the uniform batch; those rows get factor ``on_policy_ratio``, the
uniform rows 1 (the paper gives no value for the ratio; ours is a stated default).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import numpy as np
import torch
from marlctl.envs.base import EnvSpec
from marlctl.trainer.config import TrainConfig
from marlctl.trainer.errors import ConfigValueError
from marlctl.trainer.learners.remix_weights import (
    RemixWeightConfig,
    boltzmann_chosen_prob,
    remix_weights,
)
from marlctl.trainer.learners.wqmix import WQMIXLearner
from marlctl.trainer.registry import value_method
from marlctl.trainer.replay import EpisodeBatch, ReplayBuffer

__all__ = ["REMIX", "RemixLearner", "RemixOptions", "remix_weights"]


@dataclass(frozen=True)
class RemixOptions(RemixWeightConfig):
    """ReMIX's own options (the ``[algo]`` section): the weight settings of ``RemixWeightConfig``
    (w_min, the four ablation switches, normalization, temperature, ...) plus the ones below."""

    recent_episodes: int = 64
    """Size of the "recent transitions" window: the most recently stored episodes."""
    recent_batch_size: int = 8
    """Episodes drawn from the recent window per update, on top of ``replay.batch_size`` uniform ones."""
    on_policy_ratio: float = 2.0
    """Estimate of d^pi / mu for a recent episode (uniform ones: 1)."""
    central_loss_weight: float = 1.0
    """Weight of Q*'s unweighted TD loss."""

    def validate(self) -> None:
        try:
            self.weight_config()
        except ValueError as exc:
            raise ConfigValueError(f"[algo] {exc}") from None
        if self.recent_episodes < 1 or self.recent_batch_size < 0 or self.on_policy_ratio <= 0:
            raise ConfigValueError("algo.recent_episodes must be >= 1, algo.recent_batch_size >= 0 and "
                                   "algo.on_policy_ratio > 0")

    def weight_config(self) -> RemixWeightConfig:
        return RemixWeightConfig(**{f.name: getattr(self, f.name) for f in fields(RemixWeightConfig)})


@dataclass
class RemixBatch(EpisodeBatch):
    """An ``EpisodeBatch`` whose rows know whether they came from the recent window."""

    recent: torch.Tensor | None = None  # [B] bool


class RecentReplay(ReplayBuffer):
    """The shared episode buffer, whose ``sample`` adds episodes drawn from the most recent ones."""

    def __init__(self, spec: EnvSpec, capacity: int, max_t: int, recent_episodes: int, recent_batch: int) -> None:
        super().__init__(spec, capacity, max_t)
        self.recent_episodes, self.recent_batch = min(recent_episodes, capacity), recent_batch

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device | str = "cpu") -> RemixBatch:
        if self.size == 0:
            raise RuntimeError("sample() on an empty replay buffer")
        idx_main = rng.choice(self.size, size=batch_size, replace=self.size < batch_size)  # [B] uniform (mu)
        window = min(self.recent_episodes, self.size)
        back = rng.integers(1, window + 1, size=self.recent_batch)  # 1 = the newest episode
        idx_recent = (self.pos - back) % self.capacity  # [b_r] ring positions of recent episodes
        batch = self.gather(np.concatenate([idx_main, idx_recent]), device)
        recent = torch.zeros(batch_size + self.recent_batch, dtype=torch.bool, device=device)
        recent[batch_size:] = True
        return RemixBatch(**{f.name: getattr(batch, f.name) for f in dataclasses.fields(EpisodeBatch)},
                          recent=recent)


class RemixLearner(WQMIXLearner):
    """QMIX agents + mixer regressed with ReMIX's projection weights onto targets from Q*."""

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        opts: RemixOptions = self.algo_cfg
        state_BTS = batch.state[:, :-1]
        q_BTNA = self.agent_q(batch)  # [B, T+1, N, A] agents' utilities Q^j
        q_taken_BTN = self.taken(q_BTNA, batch.actions)
        # Q_tot and the mixer gradient f'_j = dQ_tot / dQ^j from the same weights (Lemma 1, closed form)
        q_tot_BT, f_prime_BTN = self.per_transition(self.nets["mixer"].forward_with_gradient, batch, q_taken_BTN,
                                                    state_BTS)
        central_q_BTNA = self.unroll(self.nets["central_agent"], batch)
        q_star_BT = self.per_transition(self.nets["central"], batch, self.taken(central_q_BTNA, batch.actions),
                                        state_BTS)

        y_BT = self.central_target(batch, q_BTNA)  # y = B* Q*_{k-1}, at the QMIX agents' greedy u_hat'
        with torch.no_grad():
            T = batch.max_t
            pi_BTN = boltzmann_chosen_prob(q_BTNA[:, :T], batch.actions, batch.avail[:, :T], opts.temperature)
            recent_B = batch.recent if isinstance(batch, RemixBatch) and batch.recent is not None else None
            on_policy_B = torch.ones(batch.batch_size, device=self.device)
            if recent_B is not None:
                on_policy_B = torch.where(recent_B, torch.full_like(on_policy_B, opts.on_policy_ratio), on_policy_B)
            w = remix_weights(
                q_tot_B=q_tot_BT.reshape(-1), y_B=y_BT.reshape(-1), q_star_B=q_star_BT.reshape(-1),
                pi_BN=pi_BTN.reshape(-1, self.spec.n_agents), mixer_grad_BN=f_prime_BTN.reshape(-1, self.spec.n_agents),
                on_policy_B=on_policy_B.unsqueeze(1).expand_as(y_BT).reshape(-1), config=opts.weight_config(),
                valid_B=batch.filled.reshape(-1),
            )
            w_BT = w.w.view_as(y_BT)

        L_remix = self.mean(w_BT * (q_tot_BT - y_BT) ** 2, batch)  # eq. 7
        L_central = self.mean((q_star_BT - y_BT) ** 2, batch)  # Q* unweighted
        loss = L_remix + opts.central_loss_weight * L_central
        mean = self.mean
        return loss, {
            "loss/remix": float(L_remix.detach()),
            "loss/central": float(L_central.detach()),
            "train/w_mean": float(mean(w_BT, batch)),
            "train/w_underestimated": float(mean(w.underestimate.view_as(y_BT).float(), batch)),
            "train/f_prime": float(mean(f_prime_BTN.mean(-1), batch)),
            "train/q_tot": float(mean(q_tot_BT.detach(), batch)),
            "train/q_star": float(mean(q_star_BT.detach(), batch)),
        }


def _recent_replay(cfg: TrainConfig, spec: EnvSpec) -> RecentReplay:
    """The shared episode buffer that also serves recent episodes (none drawn when on-policiness is off)."""
    opts: RemixOptions = cfg.algo
    return RecentReplay(spec, cfg.replay.capacity, spec.episode_limit, opts.recent_episodes,
                        opts.recent_batch_size if opts.on_policy else 0)


REMIX = value_method("remix", "ReMIX: regret-minimizing projection weights for QMIX (Mei et al.)", RemixLearner,
                     RemixOptions, make_buffer=_recent_replay)
