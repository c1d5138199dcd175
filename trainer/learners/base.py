"""Shared value-learner machinery: agent net + target, extra nets (mixers) + targets, optimizer, updates.

How to add a value learner (QTRAN, ReMIX, ...): subclass ``ValueLearner`` and implement

* ``build_networks(self) -> dict[str, nn.Module]`` - every network besides the agent, by name
  (e.g. ``{"mixer": QMixer(...)}``). The base keeps them in ``self.nets[name]``, makes a target copy
  in ``self.targets[name]`` (``self.targets["agent"]`` for the agent), and optimizes all of them with
  ONE optimizer (``OptimConfig``: Adam or RMSprop, grad clip). Your options: ``self.algo_cfg``.
* ``loss(self, batch) -> (loss, metrics)`` - ``batch`` is a ``replay.EpisodeBatch`` on the learner's
  device: ``obs [B, T+1, N, O]``, ``state [B, T+1, S]``, ``avail [B, T+1, N, A]`` (bool),
  ``actions [B, T, N]`` (int64), ``reward [B, T]``, ``terminated [B, T]`` (bool), ``filled [B, T]``
  (bool; ``batch.mask`` as float). Return a scalar loss tensor to minimize and a dict of floats to
  log, named by prefix (``loss/td``, ``loss/opt``, ``train/q_taken``...).

Helpers: ``agent_q(batch, target=)`` unrolls the recurrent agent over ``T+1`` steps -> ``[B, T+1, N, A]``
(each episode over its own views only: zeros after them)
(``agent_features`` also returns the hidden features h_i; ``unroll(net, batch)`` serves any other
per-agent network you build); ``taken(q, actions)`` gathers ``[B, T, N]``;
``next_agent_values(batch, q, target_q)`` applies double Q to get each agent's greedy next value
``[B, T, N]``; ``per_transition(net, batch, *xs)`` runs a mixer or Q* on the real transitions only;
``returns(batch, v_next_BT)`` makes one-step, n-step or TD(lambda) targets per
``ValueLearnerConfig`` (``td_targets(batch, next_values)`` calls it, skipping ``next_values`` where no step
bootstraps); ``mean(x_BT, batch)`` averages over the real (filled) steps.
The base does the optimizer step, gradient clipping, target updates and (de)serialization; with
``learner.normalize_state`` it normalizes ``batch.state`` (running mean/std) before ``loss`` sees it.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from marlctl.agents.recurrent import AgentNet
from marlctl.envs.base import EnvSpec
from marlctl.trainer import agent_unroll
from marlctl.trainer.config import TrainConfig
from marlctl.trainer.masked import masked_mean, on_real_rows
from marlctl.trainer.optim import make_optimizer
from marlctl.trainer.replay import EpisodeBatch
from marlctl.trainer.running_stats import RunningMeanStd
from marlctl.trainer.targets import greedy_next_values, n_step_returns, one_step_targets, td_lambda_returns
from torch import nn


class ValueLearner:
    """Base of value-factorization learners; subclasses implement ``build_networks`` and ``loss``."""

    def __init__(self, cfg: TrainConfig, spec: EnvSpec, device: torch.device) -> None:
        self.cfg, self.spec, self.device = cfg, spec, device
        self.lcfg = cfg.learner
        self.algo_cfg = cfg.algo
        self.agent = AgentNet(agent_unroll.agent_net_config(cfg.agent, spec))
        self.nets = nn.ModuleDict({"agent": self.agent, **self.build_networks()})
        self.state_norm: RunningMeanStd | None = None
        if self.lcfg.normalize_state:
            self.state_norm = self.nets["state_norm"] = RunningMeanStd(spec.state_dim)
        self.nets.to(device)
        self.targets = copy.deepcopy(self.nets)
        self.targets.requires_grad_(False)
        self.params = [p for p in self.nets.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(cfg.optim, self.params)
        self.updates = 0
        self.target_updates = 0

    # ------------------------------------------------------------ subclass API

    def build_networks(self) -> dict[str, nn.Module]:
        """Networks besides the agent (mixers, joint-value nets), by name."""
        return {}

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss of one batch of episodes and metrics to log."""
        raise NotImplementedError

    # ------------------------------------------------------------ helpers

    def agent_q(self, batch: EpisodeBatch, target: bool = False) -> torch.Tensor:
        """Unroll the (target) agent over every step from a zero hidden state: Q ``[B, T+1, N, A]``."""
        net = self.targets["agent"] if target else self.agent
        return self.unroll(net, batch)  # type: ignore[arg-type]

    def agent_features(self, batch: EpisodeBatch, target: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Q_i ``[B, T+1, N, A]`` and the agents' hidden features h_i ``[B, T+1, N, H]`` of the (target) agent."""
        net = self.targets["agent"] if target else self.agent
        return agent_unroll.unroll(net, batch.obs, batch.prev_actions, batch.views)  # type: ignore[arg-type]

    def unroll(self, net: AgentNet, batch: EpisodeBatch) -> torch.Tensor:
        """Unroll any per-agent network (``B*N`` rows per step) over the batch: scores ``[B, T+1, N, A]``."""
        return agent_unroll.unroll(net, batch.obs, batch.prev_actions, batch.views, features=False)[0]

    @staticmethod
    def taken(q_BTNA: torch.Tensor, actions_BTN: torch.Tensor) -> torch.Tensor:
        """Q of the actions taken, ``[B, T, N]`` (``q`` may be ``T+1`` long; its last step is dropped)."""
        T = actions_BTN.shape[1]
        return q_BTNA[:, :T].gather(-1, actions_BTN.unsqueeze(-1)).squeeze(-1)

    def next_agent_values(self, batch: EpisodeBatch, q_BTNA: torch.Tensor,
                          target_q_BTNA: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each agent's greedy next value under the target net ``[B, T, N]`` and that action ``[B, T, N]``;
        the action is chosen by the online net when ``double_q`` (pass ``q`` with or without grad)."""
        select = q_BTNA.detach() if self.lcfg.double_q else target_q_BTNA
        return greedy_next_values(target_q_BTNA[:, 1:], select[:, 1:], batch.avail[:, 1:])

    def returns(self, batch: EpisodeBatch, v_next_BT: torch.Tensor) -> torch.Tensor:
        """Targets ``[B, T]`` from next-state values: one-step, n-step or TD(lambda) per config."""
        g = self.lcfg.gamma
        if self.lcfg.td_lambda > 0:
            return td_lambda_returns(batch.reward, batch.terminated, batch.filled, v_next_BT, g, self.lcfg.td_lambda)
        if self.lcfg.n_step > 1:
            return n_step_returns(batch.reward, batch.terminated, batch.filled, v_next_BT, g, self.lcfg.n_step)
        return one_step_targets(batch.reward, batch.terminated, v_next_BT, g)

    def td_targets(self, batch: EpisodeBatch, next_values: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``returns(batch, next_values())``, no grad. Where every episode is one terminal step (the one-step
        matrix games) the targets are the rewards whatever the next values are, so ``next_values`` (the target
        networks' pass) is not run: about a sixth of a matrix game's QTRAN-alt update. Longer batches skip the
        check on ``max_t`` alone (no device sync on the SMAX path)."""
        with torch.no_grad():
            if batch.max_t == 1 and bool(batch.terminated[:, 0].all()):
                return self.returns(batch, torch.zeros_like(batch.reward))
            return self.returns(batch, next_values())

    @staticmethod
    def per_transition(fn: Any, batch: EpisodeBatch, *xs_BT: torch.Tensor) -> Any:
        """``fn(*xs_BT)`` (a mixer, Q*: ``[B, T, ...]`` rows in, ``[B, T, ...]`` out) on the batch's real
        transitions only; zeros at the padding."""
        return on_real_rows(fn, batch.filled, *xs_BT)

    @staticmethod
    def mean(x_BT: torch.Tensor, batch: EpisodeBatch) -> torch.Tensor:
        """Mean of ``x_BT`` over the batch's real (filled) transitions."""
        return masked_mean(x_BT, batch.filled)

    # ------------------------------------------------------------ training

    def update(self, batch: EpisodeBatch) -> dict[str, float]:
        """One gradient step on ``batch``; returns the loss metrics plus ``train/grad_norm``."""
        if not self.nets.training:  # a rollout switched them to eval; walking every module each update costs
            self.nets.train()
        if self.state_norm is not None:  # learners see normalized global states
            self.state_norm.update(batch.state[:, :-1][batch.filled])
            batch = dataclasses.replace(batch, state=self.state_norm(batch.state))
        loss, metrics = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"), foreach=True)
        self.optimizer.step()
        self.updates += 1
        metrics = dict(metrics)
        metrics.setdefault("loss/total", float(loss.detach()))
        metrics["train/grad_norm"] = float(grad_norm)
        return metrics

    def update_targets(self) -> None:
        """Hard update: every target network := its online network."""
        self.targets.load_state_dict(self.nets.state_dict())
        self.target_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": self.nets.state_dict(),
            "targets": self.targets.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
            "target_updates": self.target_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state["nets"])
        self.targets.load_state_dict(state["targets"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
        self.target_updates = int(state["target_updates"])
