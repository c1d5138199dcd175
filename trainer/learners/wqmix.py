"""Weighted QMIX (OW-QMIX, CW-QMIX): QMIX regressed with a weighted loss onto targets from an unrestricted Q*.

Q* (``mixers.central.CentralQ`` over a separate central agent network) is trained with the plain TD
loss; its target evaluates the greedy joint action of the QMIX agents. QMIX's loss weights each
joint action by ``w = 1`` where it matters and ``w = alpha`` otherwise (ReMIX paper, Sec. 2):
OW (optimistic): ``w = 1`` where ``Q_tot < y`` (underestimated); CW (centrally weighted):
``w = 1`` where ``y > Q*(s, u_hat)`` or ``u`` is the greedy joint action ``u_hat``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from marlctl.agents.recurrent import AgentNet, masked_greedy
from marlctl.trainer.errors import ConfigValueError
from marlctl.trainer.learners.base import ValueLearner
from marlctl.trainer.mixers.central import CentralQ
from marlctl.trainer.mixers.qmix import QMixer
from marlctl.trainer.registry import value_method
from marlctl.trainer.replay import EpisodeBatch
from torch import nn


@dataclass(frozen=True)
class WQMIXOptions:
    """Options of OW-QMIX / CW-QMIX (the ``[algo]`` section)."""

    alpha: float = 0.5
    """Weight of the joint actions QMIX may fit less well (0 < alpha <= 1; 1 = plain QMIX loss)."""
    qmix_loss_weight: float = 1.0
    """Weight of the weighted QMIX loss."""
    central_loss_weight: float = 1.0
    """Weight of Q*'s unweighted TD loss."""

    def validate(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigValueError(f"algo.alpha={self.alpha} must be in (0, 1]")


class WQMIXLearner(ValueLearner):
    """QMIX agents + mixer with a weighted loss, and an unrestricted Q* providing the targets."""

    weighting: Literal["ow", "cw"] = "ow"

    def build_networks(self) -> dict[str, nn.Module]:
        m = self.cfg.mixer
        return {
            "mixer": QMixer(self.spec.n_agents, self.spec.state_dim, m.mixing_embed_dim, m.hypernet_embed,
                            m.hypernet_layers),
            "central_agent": AgentNet(self.agent.config),
            "central": CentralQ(self.spec.n_agents, self.spec.state_dim, m.central_embed_dim),
        }

    def central_target(self, batch: EpisodeBatch, q_BTNA: torch.Tensor) -> torch.Tensor:
        """``y = r + gamma Q*^-(s', u_hat')`` ``[B, T]`` (n-step / TD(lambda) per config), ``u_hat'`` = the QMIX
        agents' greedy joint action (``q_BTNA`` over ``T+1`` steps), no grad."""

        def q_star_next() -> torch.Tensor:
            u_hat_next_BTN = masked_greedy(q_BTNA[:, 1:], batch.avail[:, 1:])
            target_central_BTNA = self.unroll(self.targets["central_agent"], batch)[:, 1:]
            v_next_BTN = target_central_BTNA.gather(-1, u_hat_next_BTN.unsqueeze(-1)).squeeze(-1)
            return self.per_transition(self.targets["central"], batch, v_next_BTN, batch.state[:, 1:])

        return self.td_targets(batch, q_star_next)

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        opts: WQMIXOptions = self.algo_cfg
        state_BTS = batch.state[:, :-1]
        q_BTNA = self.agent_q(batch)  # [B, T+1, N, A]
        q_tot_BT = self.per_transition(self.nets["mixer"], batch, self.taken(q_BTNA, batch.actions), state_BTS)
        central_q_BTNA = self.unroll(self.nets["central_agent"], batch)  # [B, T+1, N, A]
        q_star_BT = self.per_transition(self.nets["central"], batch, self.taken(central_q_BTNA, batch.actions),
                                        state_BTS)
        y_BT = self.central_target(batch, q_BTNA)
        with torch.no_grad():
            if self.weighting == "ow":
                full_BT = q_tot_BT < y_BT  # optimistic: full weight where QMIX underestimates
            else:
                u_hat_BTN = masked_greedy(q_BTNA[:, :-1], batch.avail[:, :-1])
                is_greedy_BT = (batch.actions == u_hat_BTN).all(dim=-1)
                q_star_greedy_BT = self.per_transition(self.nets["central"], batch,
                                                       self.taken(central_q_BTNA, u_hat_BTN), state_BTS)
                full_BT = (y_BT > q_star_greedy_BT) | is_greedy_BT
            w_BT = torch.where(full_BT, torch.ones_like(y_BT), torch.full_like(y_BT, opts.alpha))
        loss_qmix = self.mean(w_BT * (q_tot_BT - y_BT) ** 2, batch)
        loss_central = self.mean((q_star_BT - y_BT) ** 2, batch)
        loss = opts.qmix_loss_weight * loss_qmix + opts.central_loss_weight * loss_central
        return loss, {
            "loss/qmix": float(loss_qmix.detach()),
            "loss/central": float(loss_central.detach()),
            "train/w_mean": float(self.mean(w_BT, batch)),
            "train/q_tot": float(self.mean(q_tot_BT.detach(), batch)),
            "train/q_star": float(self.mean(q_star_BT.detach(), batch)),
        }


class OWQMIXLearner(WQMIXLearner):
    weighting = "ow"


class CWQMIXLearner(WQMIXLearner):
    weighting = "cw"


OW_QMIX = value_method("ow-qmix", "OW-QMIX: optimistically weighted QMIX (Rashid et al. 2020)", OWQMIXLearner,
                       WQMIXOptions)
CW_QMIX = value_method("cw-qmix", "CW-QMIX: centrally weighted QMIX (Rashid et al. 2020)", CWQMIXLearner,
                       WQMIXOptions)
