"""VDN and QMIX learners: a mixer of the agents' chosen Q-values regressed onto a TD target."""
from __future__ import annotations

import torch
from marlctl.trainer.learners.base import ValueLearner
from marlctl.trainer.mixers.qmix import QMixer
from marlctl.trainer.mixers.vdn import VDNMixer
from marlctl.trainer.registry import NoOptions, value_method
from marlctl.trainer.replay import EpisodeBatch
from torch import nn


class MixerLearner(ValueLearner):
    """TD learning of ``Q_tot = mixer(Q_1(u_1), ..., Q_N(u_N); s)`` (the mixer is set by subclasses)."""

    def build_mixer(self) -> nn.Module:
        raise NotImplementedError

    def build_networks(self) -> dict[str, nn.Module]:
        return {"mixer": self.build_mixer()}

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        q_BTNA = self.agent_q(batch)  # [B, T+1, N, A]
        q_tot_BT = self.per_transition(self.nets["mixer"], batch, self.taken(q_BTNA, batch.actions), batch.state[:, :-1])

        def q_tot_next() -> torch.Tensor:
            v_next_BTN, _ = self.next_agent_values(batch, q_BTNA, self.agent_q(batch, target=True))
            return self.per_transition(self.targets["mixer"], batch, v_next_BTN, batch.state[:, 1:])

        y_BT = self.td_targets(batch, q_tot_next)
        loss_td = self.mean((q_tot_BT - y_BT) ** 2, batch)
        return loss_td, {
            "loss/td": float(loss_td.detach()),
            "train/q_tot": float(self.mean(q_tot_BT.detach(), batch)),
            "train/target": float(self.mean(y_BT, batch)),
        }


class VDNLearner(MixerLearner):
    """VDN: Q_tot = sum_i Q_i."""

    def build_mixer(self) -> nn.Module:
        return VDNMixer()


class QMIXLearner(MixerLearner):
    """QMIX: Q_tot = monotonic hypernetwork mixer of the Q_i conditioned on the state."""

    def build_mixer(self) -> nn.Module:
        m = self.cfg.mixer
        return QMixer(self.spec.n_agents, self.spec.state_dim, m.mixing_embed_dim, m.hypernet_embed, m.hypernet_layers)


VDN = value_method("vdn", "VDN: additive value decomposition (Sunehag et al. 2018)", VDNLearner, NoOptions)
QMIX = value_method("qmix", "QMIX: monotonic mixing with state hypernetworks (Rashid et al. 2018)", QMIXLearner,
                    NoOptions)
