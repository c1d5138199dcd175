"""QTRAN-base and QTRAN-alt learners (Son et al. 2019, §3.2-3.4 and Algorithm 1 of the supplementary).

QTRAN-base minimizes ``L = L_td + lambda_opt L_opt + lambda_nopt L_nopt`` with::

    L_td   = (Q_jt(tau, u) - y_dqn)^2,   y_dqn = r + gamma Q_jt(tau', u_bar'; theta^-)
    L_opt  = (Q'_jt(tau, u_bar) - Q^_jt(tau, u_bar) + V_jt(tau))^2
    L_nopt = (min[Q'_jt(tau, u) - Q^_jt(tau, u) + V_jt(tau), 0])^2

where ``Q'_jt = sum_i Q_i``, ``u_bar`` the agents' greedy actions, and ``Q^_jt`` is Q_jt held fixed
(detached: only ``Q_i`` and ``V_jt`` are fitted by L_opt / L_nopt). QTRAN-alt replaces L_nopt by
``L_nopt_min = 1/N sum_i min_{u_i} (Q'_jt(tau, u_i, u_-i) - Q^_jt(tau, u_i, u_-i) + V_jt)^2`` using
the counterfactual joint network, and computes L_td and L_opt for every agent's head. ``vjt_zero``
sets V_jt = 0 (Theorem 1a: fully observable tasks only; it warns otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from marlctl.envs.base import EnvSpec
from marlctl.trainer.errors import ConfigValueError
from marlctl.trainer.learners.base import ValueLearner
from marlctl.trainer.mixers.qtran_joint import QtranJointAlt, QtranJointBase
from marlctl.trainer.replay import EpisodeBatch
from marlctl.trainer.value_algorithm import value_method
from torch import nn


@dataclass(frozen=True)
class QtranConfig:
    """QTRAN's own options (the ``[algo]`` section); defaults are the paper's (appendix C)."""

    lambda_opt: float = 1.0
    """Weight of L_opt (Tables 3-5: 1)."""
    lambda_nopt: float = 1.0
    """Weight of L_nopt (base) or L_nopt_min (alt) (Tables 3-5: 1)."""
    joint_embed_dim: int = 64
    """Width of the joint networks' layers (appendix C: 32 for the matrix game, 64 for predator-prey)."""
    joint_state_input: bool = False
    """Also feed the global state to Q_jt / V_jt (off: the paper's networks read only agent features)."""
    vjt_zero: bool = False
    """Set V_jt = 0 (Theorem 1a; valid only for fully observable tasks such as the matrix game)."""

    def validate(self) -> None:
        if self.lambda_opt < 0 or self.lambda_nopt < 0:
            raise ConfigValueError(f"algo.lambda_opt={self.lambda_opt} and algo.lambda_nopt={self.lambda_nopt} must be >= 0")
        if self.joint_embed_dim < 1:
            raise ConfigValueError(f"algo.joint_embed_dim={self.joint_embed_dim} must be >= 1")

    def env_warnings(self, spec: EnvSpec) -> list[str]:
        if self.vjt_zero and not spec.fully_observable:
            return [f"algo.vjt_zero=true on {spec.env_id}, which is partially observable: QTRAN's V_jt = 0 "
                    "(Theorem 1a) holds only for fully observable tasks; the factorization may be wrong"]
        return []


class QtranLearner(ValueLearner):
    """Shared parts of QTRAN-base and -alt: the joint network, unrolls, greedy actions, V_jt."""

    alt: bool = False

    def build_networks(self) -> dict[str, nn.Module]:
        c: QtranConfig = self.algo_cfg
        s, state_dim = self.spec, self.spec.state_dim if c.joint_state_input else 0
        if self.alt:
            return {"joint": QtranJointAlt(self.cfg.agent.hidden_dim, s.n_actions, s.n_agents, c.joint_embed_dim,
                                           state_dim)}
        return {"joint": QtranJointBase(self.cfg.agent.hidden_dim, s.n_actions, c.joint_embed_dim, state_dim)}

    def unroll_features(self, batch: EpisodeBatch, target: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Q_i ``[B, T+1, N, A]`` and the agents' hidden features h_i ``[B, T+1, N, H]`` (shared lower layers)."""
        net = self.targets["agent"] if target else self.agent
        B, T1, N, _ = batch.obs.shape
        prev_BTN = batch.prev_actions
        if not net.config.recurrent:  # feed-forward agent: every step in one call (no state to carry)
            R = B * T1 * N
            ids_R = torch.arange(N, device=self.device).repeat(B * T1)
            q_RA, h_RH = net(batch.obs.reshape(R, -1), prev_BTN.reshape(-1), ids_R, net.initial_hidden(R, self.device))
            return q_RA.view(B, T1, N, -1), h_RH.view(B, T1, N, -1)
        ids_R = torch.arange(N, device=self.device).repeat(B)  # [B*N]
        hidden_RH = net.initial_hidden(B * N, self.device)
        qs, hs = [], []
        for t in range(T1):
            q_RA, hidden_RH = net(batch.obs[:, t].reshape(B * N, -1), prev_BTN[:, t].reshape(-1), ids_R, hidden_RH)
            qs.append(q_RA.view(B, N, -1))
            hs.append(hidden_RH.view(B, N, -1))
        return torch.stack(qs, dim=1), torch.stack(hs, dim=1)

    def joint(self, hidden_BTNH: torch.Tensor, actions_BTN: torch.Tensor, state_BTS: torch.Tensor,
              target: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The joint network over ``[B, T]``: base -> Q_jt ``[B, T]``; alt -> Q_jt(tau, ., u_-i) ``[B, T, N, A]``.
        Second output V_jt ``[B, T]`` (zeros when ``vjt_zero``)."""
        net = (self.targets if target else self.nets)["joint"]
        B, T, N, H = hidden_BTNH.shape
        onehot = F.one_hot(actions_BTN, self.spec.n_actions).to(hidden_BTNH.dtype).reshape(B * T, N, -1)
        q, v_R = net(hidden_BTNH.reshape(B * T, N, H), onehot, state_BTS.reshape(B * T, -1))
        v_BT = torch.zeros_like(v_R).view(B, T) if self.algo_cfg.vjt_zero else v_R.view(B, T)
        return q.view(B, T, *q.shape[1:]), v_BT

    @staticmethod
    def greedy(q_BTNA: torch.Tensor, avail_BTNA: torch.Tensor) -> torch.Tensor:
        """u_bar: each agent's greedy available action ``[B, T, N]``."""
        return q_BTNA.detach().masked_fill(~avail_BTNA, float("-inf")).argmax(dim=-1)

    def q_jt_of(self, q_jt_out: torch.Tensor, actions_BTN: torch.Tensor) -> torch.Tensor:
        """Q_jt(tau, u) per head: base ``[B, T]`` as is; alt ``[B, T, N]`` = each agent's head at its own u_i."""
        if not self.alt:
            return q_jt_out
        return q_jt_out.gather(-1, actions_BTN.unsqueeze(-1)).squeeze(-1)

    def joint_values(self, batch: EpisodeBatch, actions_BTN: torch.Tensor) -> torch.Tensor:
        """Q_jt(tau, u) ``[B, T]`` for given joint actions (alt: mean over the agents' heads), no grad."""
        with torch.no_grad():
            _, h_BTNH = self.unroll_features(batch)
            T = actions_BTN.shape[1]
            q_jt, _ = self.joint(h_BTNH[:, :T], actions_BTN, batch.state[:, :T])
            q_jt = self.q_jt_of(q_jt, actions_BTN)
            return q_jt.mean(-1) if self.alt else q_jt

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        c: QtranConfig = self.algo_cfg
        T = batch.max_t
        q_BTNA, h_BTNH = self.unroll_features(batch)  # Q_i and h_i over T+1 steps
        q_BTNA_now, h_now, s_now, avail_now = q_BTNA[:, :T], h_BTNH[:, :T], batch.state[:, :T], batch.avail[:, :T]
        u_BTN = batch.actions
        u_bar_BTN = self.greedy(q_BTNA_now, avail_now)

        with torch.no_grad():  # y_dqn = r + gamma Q_jt(tau', u_bar'; theta^-), u_bar' = argmax_i Q_i(tau'_i; theta^-)
            target_q_BTNA, target_h_BTNH = self.unroll_features(batch, target=True)
            _, u_bar_next_BTN = self.next_agent_values(batch, q_BTNA, target_q_BTNA)
            q_jt_next, _ = self.joint(target_h_BTNH[:, 1:], u_bar_next_BTN, batch.state[:, 1:], target=True)
            q_jt_next_BT = self.q_jt_of(q_jt_next, u_bar_next_BTN)
            q_jt_next_BT = q_jt_next_BT.mean(-1) if self.alt else q_jt_next_BT
            y_dqn_BT = self.returns(batch, q_jt_next_BT)

        q_jt_out, v_jt_BT = self.joint(h_now, u_BTN, s_now)
        q_jt_BT = self.q_jt_of(q_jt_out, u_BTN)  # base [B, T]; alt [B, T, N] (one per head)
        q_jt_opt_out, _ = self.joint(h_now, u_bar_BTN, s_now)
        q_jt_hat_opt = self.q_jt_of(q_jt_opt_out, u_bar_BTN).detach()  # Q^_jt(tau, u_bar): not learned here
        q_i_taken_BTN = self.taken(q_BTNA_now, u_BTN)
        q_prime_BT = q_i_taken_BTN.sum(-1)  # Q'_jt(tau, u) = sum_i Q_i(tau_i, u_i)
        q_prime_opt_BT = self.taken(q_BTNA_now, u_bar_BTN).sum(-1)  # Q'_jt(tau, u_bar)
        mean = self.masked_mean

        # ---- L_td: Q_jt regressed onto y_dqn (alt: every agent's counterfactual head) ----
        td_err = q_jt_BT - (y_dqn_BT.unsqueeze(-1) if self.alt else y_dqn_BT)
        L_td = mean(td_err.pow(2).mean(-1) if self.alt else td_err.pow(2), batch)

        # ---- L_opt: condition (4a), Q'_jt(tau, u_bar) - Q^_jt(tau, u_bar) + V_jt(tau) = 0 ----
        if self.alt:
            opt_err = q_prime_opt_BT.unsqueeze(-1) - q_jt_hat_opt + v_jt_BT.unsqueeze(-1)  # [B, T, N]
            L_opt = mean(opt_err.pow(2).mean(-1), batch)
        else:
            L_opt = mean((q_prime_opt_BT - q_jt_hat_opt + v_jt_BT).pow(2), batch)

        if not self.alt:
            # ---- L_nopt: condition (4b), Q'_jt(tau, u) - Q^_jt(tau, u) + V_jt(tau) >= 0 ----
            nopt_BT = q_prime_BT - q_jt_BT.detach() + v_jt_BT
            L_nopt = mean(nopt_BT.clamp(max=0.0).pow(2), batch)
            loss = L_td + c.lambda_opt * L_opt + c.lambda_nopt * L_nopt
            nopt_metrics = {"loss/nopt": float(L_nopt.detach())}
        else:
            # ---- L_nopt_min: condition (7), 1/N sum_i min_{u_i} D(tau, u_i, u_-i) ----
            others_BTN1 = (q_prime_BT.unsqueeze(-1) - q_i_taken_BTN).unsqueeze(-1)  # sum_{j != i} Q_j(u_j)
            q_prime_cf_BTNA = q_BTNA_now + others_BTN1  # Q'_jt(tau, ., u_-i)
            D_BTNA = (q_prime_cf_BTNA - q_jt_out.detach() + v_jt_BT[..., None, None]).pow(2)
            avail_BTNA = avail_now | ~avail_now.any(dim=-1, keepdim=True)  # padding rows: all "available"
            min_D_BTN = D_BTNA.masked_fill(~avail_BTNA, float("inf")).min(dim=-1).values
            L_nopt_min = mean(min_D_BTN.mean(-1), batch)
            loss = L_td + c.lambda_opt * L_opt + c.lambda_nopt * L_nopt_min
            nopt_metrics = {"loss/nopt_min": float(L_nopt_min.detach())}

        q_jt_mean = q_jt_BT.detach().mean(-1) if self.alt else q_jt_BT.detach()
        return loss, {
            "loss/td": float(L_td.detach()),
            "loss/opt": float(L_opt.detach()),
            **nopt_metrics,
            "loss/total": float(loss.detach()),
            "train/q_jt": float(mean(q_jt_mean, batch)),
            "train/q_prime": float(mean(q_prime_BT.detach(), batch)),
            "train/v_jt": float(mean(v_jt_BT.detach(), batch)),
            "train/target": float(mean(y_dqn_BT, batch)),
        }


class QtranBaseLearner(QtranLearner):
    """QTRAN-base: Q_jt network over summed agent features, L_nopt on condition (4b)."""

    alt = False


class QtranAltLearner(QtranLearner):
    """QTRAN-alt: counterfactual joint network, L_nopt_min on condition (7)."""

    alt = True


QTRAN_BASE = value_method("qtran-base", "QTRAN-base: factorization by transformation (Son et al. 2019)",
                          QtranBaseLearner, QtranConfig)
QTRAN_ALT = value_method("qtran-alt", "QTRAN-alt: QTRAN with the counterfactual joint network and L_nopt_min",
                         QtranAltLearner, QtranConfig)
