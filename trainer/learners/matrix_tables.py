"""Learned value tables of a one-step matrix game (QTRAN Table 1): Q_i per agent and Q_jt / Q_tot per joint action.

Works for any value learner on a single-state game: QTRAN learners report their joint network Q_jt
and the transformed ``Q'_jt = sum_i Q_i``; mixer learners (VDN, QMIX, WQMIX, ReMIX) report
``Q_tot = mixer(Q_1(u_1), ..., Q_N(u_N); s)``. The observation/state is taken from a stored episode's
first step, so the tables are what the trained networks give on the game's real input.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from marlctl.trainer.learners.base import ValueLearner
from marlctl.trainer.replay import EpisodeBatch


@dataclass
class MatrixTables:
    """Value tables of an N-agent, A-action one-step game (``A^N`` joint actions, agent-major order)."""

    q_i: np.ndarray  # [N, A] each agent's utilities
    q_joint: np.ndarray  # [A]*N Q_jt (QTRAN) or Q_tot (mixers)
    q_prime: np.ndarray  # [A]*N sum_i Q_i(u_i) (QTRAN's Q'_jt; equals Q_tot only for VDN)
    greedy: tuple[int, ...]  # each agent's argmax of Q_i (decentralized greedy joint action)

    def to_dict(self) -> dict[str, list]:
        return {"q_i": self.q_i.tolist(), "q_joint": self.q_joint.tolist(), "q_prime": self.q_prime.tolist(),
                "greedy": list(self.greedy)}


def matrix_tables(learner: ValueLearner, first_step: EpisodeBatch) -> MatrixTables:
    """Tables at the first step of ``first_step`` (a 1-episode batch of the matrix game)."""
    N, A = learner.spec.n_agents, learner.spec.n_actions
    joint = torch.tensor(list(itertools.product(range(A), repeat=N)), device=learner.device)  # [A^N, N]
    J = joint.shape[0]

    def rep(x: torch.Tensor, steps: int) -> torch.Tensor:  # the first episode's first steps, J times
        y = x[:1, :steps]
        return y.expand(J, *y.shape[1:])

    batch = EpisodeBatch(
        obs=rep(first_step.obs, 2), state=rep(first_step.state, 2), avail=rep(first_step.avail, 2),
        actions=joint.unsqueeze(1), reward=rep(first_step.reward, 1), terminated=rep(first_step.terminated, 1),
        filled=torch.ones(J, 1, dtype=torch.bool, device=learner.device),
    )
    with torch.no_grad():
        q_BTNA = learner.agent_q(batch)  # [J, 2, N, A]
        taken_JN = learner.taken(q_BTNA, batch.actions)[:, 0]
        joint_values = getattr(learner, "joint_values", None)
        if callable(joint_values):
            q_joint_J = joint_values(batch, batch.actions)[:, 0]
        else:
            q_joint_J = learner.nets["mixer"](taken_JN.unsqueeze(1), batch.state[:, :1])[:, 0]
    q_i = q_BTNA[0, 0].cpu().numpy()
    shape = (A,) * N
    return MatrixTables(
        q_i=q_i, q_joint=q_joint_J.cpu().numpy().reshape(shape), q_prime=taken_JN.sum(-1).cpu().numpy().reshape(shape),
        greedy=tuple(int(a) for a in q_i.argmax(axis=-1)),
    )
