"""QTRAN-base and QTRAN-alt learners (Son et al. 2019, §3.2-3.4 and Algorithm 1 of the supplementary).

QTRAN-base minimizes ``L = L_td + lambda_opt L_opt + lambda_nopt L_nopt`` with::

    L_td   = (Q_jt(tau, u) - y_dqn)^2,   y_dqn = r + gamma Q_jt(tau', u_bar'; theta^-)
    L_opt  = (Q'_jt(tau, u_bar) - Q^_jt(tau, u_bar) + V_jt(tau))^2
    L_nopt = (min[Q'_jt(tau, u) - Q^_jt(tau, u) + V_jt(tau), 0])^2

where ``Q'_jt = sum_i Q_i``, ``u_bar`` the agents' greedy actions, and ``Q^_jt`` is Q_jt held fixed
(detached: only ``Q_i`` and ``V_jt`` are fitted by L_opt / L_nopt). QTRAN-alt replaces L_nopt by
``L_nopt_min = 1/N sum_i (min_{u_i} [Q'_jt(tau, u_i, u_-i) - Q^_jt(tau, u_i, u_-i) + V_jt])^2`` using
the counterfactual joint network, and computes L_td and L_opt for every agent's head. ``vjt_zero``
sets V_jt = 0 (Theorem 1a: fully observable tasks only; it warns otherwise).

L_nopt_min is written from condition (7), ``min_{u_i} [Q'_jt - Q^_jt + V_jt](tau, u_i, u_-i) = 0``: the
square of the min of the signed difference d. The paper's printed formula squares D before the min;
min_{u_i} d^2 then fits the d nearest zero and leaves a negative d (Q'_jt below Q_jt - V_jt: condition
(4b) violated, e.g. at a better joint action the agents' greedy misses) without any gradient, so the
agents' greedy often stayed on a non-optimal joint action of a random 3x3 game (Table 6's protocol) with
Q_jt already exact. (min d)^2 = 0 holds exactly when (7) does: every d >= 0 and one is 0
(``bench/results/paper_qtran_random.md``).

Each variant's ``loss`` reads top to bottom like its section (``QtranBaseLearner``: §3.3,
``QtranAltLearner``: §3.4); what both need (the agents' unroll, ``u_bar``, ``Q'_jt``, the ``y_dqn``
target) is computed once by ``QtranLearner.terms``. A variant differs in its joint network and in
``q_jt``: how Q_jt(tau, u) is read from that network's output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from marlctl.agents.recurrent import masked_greedy
from marlctl.envs.base import EnvSpec
from marlctl.trainer.errors import ConfigValueError
from marlctl.trainer.learners.base import ValueLearner
from marlctl.trainer.mixers.qtran_joint import QtranJointAlt, QtranJointBase
from marlctl.trainer.registry import value_method
from marlctl.trainer.replay import EpisodeBatch
from torch import nn


@dataclass(frozen=True)
class QtranConfig:
    """QTRAN's own options (the ``[algo]`` section); defaults are the paper's (appendix C)."""

    lambda_opt: float = 1.0
    """Weight of L_opt (Tables 3-5: 1)."""
    lambda_nopt: float = 1.0
    """Weight of L_nopt (base) or L_nopt_min (alt) (Tables 3-5: 1)."""
    joint_state_input: bool = False
    """Also feed the global state to Q_jt / V_jt (off: the paper's networks read only agent features)."""
    vjt_zero: bool = False
    """Set V_jt = 0 (Theorem 1a; valid only for fully observable tasks such as the matrix game)."""

    def validate(self) -> None:
        if self.lambda_opt < 0 or self.lambda_nopt < 0:
            raise ConfigValueError(f"algo.lambda_opt={self.lambda_opt} and algo.lambda_nopt={self.lambda_nopt} must be >= 0")

    def env_warnings(self, spec: EnvSpec) -> list[str]:
        if self.vjt_zero and not spec.fully_observable:
            return [f"algo.vjt_zero=true on {spec.env_id}, which is partially observable: QTRAN's V_jt = 0 "
                    "(Theorem 1a) holds only for fully observable tasks; the factorization may be wrong"]
        return []


@dataclass
class QtranTerms:
    """What both QTRAN losses are built from, over the batch's ``T`` transitions."""

    q_i: torch.Tensor  # [B, T, N, A] Q_i(tau_i, .)
    h: torch.Tensor  # [B, T, N, H] the agents' hidden features (shared lower layers)
    state: torch.Tensor  # [B, T, S]
    avail: torch.Tensor  # [B, T, N, A] bool
    u: torch.Tensor  # [B, T, N] the joint action taken
    u_bar: torch.Tensor  # [B, T, N] each agent's greedy available action
    q_i_taken: torch.Tensor  # [B, T, N] Q_i(tau_i, u_i)
    q_prime: torch.Tensor  # [B, T] Q'_jt(tau, u) = sum_i Q_i(tau_i, u_i)
    q_prime_opt: torch.Tensor  # [B, T] Q'_jt(tau, u_bar)
    y_dqn: torch.Tensor  # [B, T] r + gamma Q_jt(tau', u_bar'; theta^-), no grad


class QtranLearner(ValueLearner):
    """Shared parts of QTRAN-base and -alt: the joint network call, the terms both losses use, metrics."""

    def build_joint(self, embed_dim: int, state_dim: int) -> nn.Module:
        raise NotImplementedError

    def q_jt(self, joint_out: torch.Tensor, actions_BTN: torch.Tensor) -> torch.Tensor:
        """Q_jt(tau, u) ``[B, T]`` from the joint network's output at joint action ``u``."""
        raise NotImplementedError

    def build_networks(self) -> dict[str, nn.Module]:
        c: QtranConfig = self.algo_cfg
        return {"joint": self.build_joint(self.cfg.mixer.joint_embed_dim,
                                          self.spec.state_dim if c.joint_state_input else 0)}

    def joint(self, hidden_BTNH: torch.Tensor, actions_BTN: torch.Tensor, state_BTS: torch.Tensor,
              target: bool = False, batch: EpisodeBatch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The joint network over ``[B, T]`` at joint action ``actions``: its output (base: Q_jt ``[B, T]``; alt:
        Q_jt(tau, ., u_-i) ``[B, T, N, A]``) and V_jt ``[B, T]`` (zeros when ``vjt_zero``). Given the ``batch`` it
        runs on its real transitions only (``per_transition``), zeros elsewhere."""
        net = (self.targets if target else self.nets)["joint"]

        def run(hidden: torch.Tensor, actions: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            B, T, N, H = hidden.shape
            onehot = F.one_hot(actions, self.spec.n_actions).to(hidden.dtype).reshape(B * T, N, -1)
            q, v_R = net(hidden.reshape(B * T, N, H), onehot, state.reshape(B * T, -1))
            v_BT = torch.zeros_like(v_R).view(B, T) if self.algo_cfg.vjt_zero else v_R.view(B, T)
            return q.view(B, T, *q.shape[1:]), v_BT

        if batch is None:
            return run(hidden_BTNH, actions_BTN, state_BTS)
        return self.per_transition(run, batch, hidden_BTNH, actions_BTN, state_BTS)

    def joint_values(self, batch: EpisodeBatch, actions_BTN: torch.Tensor) -> torch.Tensor:
        """Q_jt(tau, u) ``[B, T]`` for given joint actions, no grad (the matrix-game tables)."""
        with torch.no_grad():
            _, h_BTNH = self.agent_features(batch)
            T = actions_BTN.shape[1]
            return self.q_jt(self.joint(h_BTNH[:, :T], actions_BTN, batch.state[:, :T])[0], actions_BTN)

    def terms(self, batch: EpisodeBatch) -> QtranTerms:
        T = batch.max_t
        q_BTNA, h_BTNH = self.agent_features(batch)  # Q_i and h_i over T+1 steps
        q_now, avail_now, u = q_BTNA[:, :T], batch.avail[:, :T], batch.actions
        u_bar = masked_greedy(q_now.detach(), avail_now)

        def q_jt_next() -> torch.Tensor:  # y_dqn = r + gamma Q_jt(tau', u_bar'; theta^-), u_bar' = argmax_i Q_i(tau'_i)
            target_q_BTNA, target_h_BTNH = self.agent_features(batch, target=True)
            _, u_bar_next = self.next_agent_values(batch, q_BTNA, target_q_BTNA)
            q_jt_next_out, _ = self.joint(target_h_BTNH[:, 1:], u_bar_next, batch.state[:, 1:], target=True,
                                          batch=batch)
            return self.q_jt(q_jt_next_out, u_bar_next)

        y_dqn = self.td_targets(batch, q_jt_next)
        q_i_taken = self.taken(q_now, u)
        return QtranTerms(q_i=q_now, h=h_BTNH[:, :T], state=batch.state[:, :T], avail=avail_now, u=u, u_bar=u_bar,
                          q_i_taken=q_i_taken, q_prime=q_i_taken.sum(-1),
                          q_prime_opt=self.taken(q_now, u_bar).sum(-1), y_dqn=y_dqn)

    def metrics(self, batch: EpisodeBatch, t: QtranTerms, q_jt_BT: torch.Tensor, v_jt_BT: torch.Tensor,
                opt_gap_BT: torch.Tensor, nopt_gap_BT: torch.Tensor, **losses: torch.Tensor) -> dict[str, float]:
        """Losses, value scales and how far the factorization conditions hold on this batch, in value units:
        ``train/opt_gap`` is the mean |Q'_jt - Q^_jt + V_jt| at u_bar (condition (4a)) and ``train/nopt_gap`` the
        mean amount by which the taken joint action falls below (4b) (base) or |min_{u_i} [...]| misses (7)
        (alt); both are 0 when the conditions hold. A QTRAN whose gaps stay large against the spread of Q_jt
        over actions has not transformed Q_jt yet: its agents' greedy actions need not be Q_jt's."""
        mean = self.mean
        return {
            **{f"loss/{k}": float(v.detach()) for k, v in losses.items()},
            "train/opt_gap": float(mean(opt_gap_BT.detach(), batch)),
            "train/nopt_gap": float(mean(nopt_gap_BT.detach(), batch)),
            "train/q_jt": float(mean(q_jt_BT.detach(), batch)),
            "train/q_prime": float(mean(t.q_prime.detach(), batch)),
            "train/v_jt": float(mean(v_jt_BT.detach(), batch)),
            "train/target": float(mean(t.y_dqn, batch)),
        }


class QtranBaseLearner(QtranLearner):
    """QTRAN-base (§3.3): Q_jt network over summed agent features, L_nopt on condition (4b)."""

    def build_joint(self, embed_dim: int, state_dim: int) -> nn.Module:
        return QtranJointBase(self.cfg.agent.hidden_dim, self.spec.n_actions, embed_dim, state_dim)

    def q_jt(self, joint_out: torch.Tensor, actions_BTN: torch.Tensor) -> torch.Tensor:
        return joint_out  # the network's one output is Q_jt(tau, u)

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        c: QtranConfig = self.algo_cfg
        t, mean = self.terms(batch), self.mean
        q_jt_BT, v_jt_BT = self.joint(t.h, t.u, t.state, batch=batch)
        with torch.no_grad():  # Q^_jt(tau, u_bar): not learned here
            q_jt_hat_opt_BT = self.joint(t.h, t.u_bar, t.state, batch=batch)[0]

        # ---- L_td: Q_jt regressed onto y_dqn ----
        L_td = mean((q_jt_BT - t.y_dqn).pow(2), batch)
        # ---- L_opt: condition (4a), Q'_jt(tau, u_bar) - Q^_jt(tau, u_bar) + V_jt(tau) = 0 ----
        opt_err_BT = t.q_prime_opt - q_jt_hat_opt_BT + v_jt_BT
        L_opt = mean(opt_err_BT.pow(2), batch)
        # ---- L_nopt: condition (4b), Q'_jt(tau, u) - Q^_jt(tau, u) + V_jt(tau) >= 0 ----
        nopt_short_BT = (t.q_prime - q_jt_BT.detach() + v_jt_BT).clamp(max=0.0)  # <= 0: how far (4b) is missed
        L_nopt = mean(nopt_short_BT.pow(2), batch)

        loss = L_td + c.lambda_opt * L_opt + c.lambda_nopt * L_nopt
        return loss, self.metrics(batch, t, q_jt_BT, v_jt_BT, opt_err_BT.abs(), -nopt_short_BT,
                                  td=L_td, opt=L_opt, nopt=L_nopt, total=loss)


class QtranAltLearner(QtranLearner):
    """QTRAN-alt (§3.4): counterfactual joint network Q_jt(tau, ., u_-i) for every agent, L_nopt_min on (7)."""

    def build_joint(self, embed_dim: int, state_dim: int) -> nn.Module:
        s = self.spec
        return QtranJointAlt(self.cfg.agent.hidden_dim, s.n_actions, s.n_agents, embed_dim, state_dim)

    @staticmethod
    def heads_at(joint_out_BTNA: torch.Tensor, actions_BTN: torch.Tensor) -> torch.Tensor:
        """Each agent's counterfactual head at its own action: Q_jt(tau, u_i, u_-i) ``[B, T, N]``."""
        return joint_out_BTNA.gather(-1, actions_BTN.unsqueeze(-1)).squeeze(-1)

    def q_jt(self, joint_out: torch.Tensor, actions_BTN: torch.Tensor) -> torch.Tensor:
        return self.heads_at(joint_out, actions_BTN).mean(-1)  # every head estimates Q_jt(tau, u): their mean

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        c: QtranConfig = self.algo_cfg
        t, mean = self.terms(batch), self.mean
        q_cf_BTNA, v_jt_BT = self.joint(t.h, t.u, t.state, batch=batch)  # Q_jt(tau, ., u_-i) for every agent i
        q_jt_BTN = self.heads_at(q_cf_BTNA, t.u)  # each head at u
        with torch.no_grad():  # Q^_jt(tau, u_bar): not learned here
            q_jt_hat_opt_BTN = self.heads_at(self.joint(t.h, t.u_bar, t.state, batch=batch)[0], t.u_bar)

        # ---- L_td: every agent's counterfactual head regressed onto y_dqn ----
        L_td = mean((q_jt_BTN - t.y_dqn.unsqueeze(-1)).pow(2).mean(-1), batch)
        # ---- L_opt: condition (4a) for every head ----
        opt_err_BTN = t.q_prime_opt.unsqueeze(-1) - q_jt_hat_opt_BTN + v_jt_BT.unsqueeze(-1)
        L_opt = mean(opt_err_BTN.pow(2).mean(-1), batch)
        # ---- L_nopt_min: condition (7), min_{u_i} [Q'_jt - Q^_jt + V_jt](tau, u_i, u_-i) = 0 for every i ----
        others_BTN1 = (t.q_prime.unsqueeze(-1) - t.q_i_taken).unsqueeze(-1)  # sum_{j != i} Q_j(u_j)
        q_prime_cf_BTNA = t.q_i + others_BTN1  # Q'_jt(tau, ., u_-i)
        d_BTNA = q_prime_cf_BTNA - q_cf_BTNA.detach() + v_jt_BT[..., None, None]  # signed, not squared
        avail_BTNA = t.avail | ~t.avail.any(dim=-1, keepdim=True)  # padding rows: all "available"
        min_d_BTN = d_BTNA.masked_fill(~avail_BTNA, float("inf")).min(dim=-1).values
        # Square of the min (see the module docstring): a negative d, i.e. a violated (4b), is the one pushed up.
        L_nopt_min = mean(min_d_BTN.pow(2).mean(-1), batch)

        loss = L_td + c.lambda_opt * L_opt + c.lambda_nopt * L_nopt_min
        return loss, self.metrics(batch, t, q_jt_BTN.mean(-1), v_jt_BT, opt_err_BTN.abs().mean(-1),
                                  min_d_BTN.abs().mean(-1), td=L_td, opt=L_opt, nopt_min=L_nopt_min,
                                  total=loss)


QTRAN_BASE = value_method("qtran-base", "QTRAN-base: factorization by transformation (Son et al. 2019)",
                          QtranBaseLearner, QtranConfig)
QTRAN_ALT = value_method("qtran-alt", "QTRAN-alt: QTRAN with the counterfactual joint network and L_nopt_min",
                         QtranAltLearner, QtranConfig)
