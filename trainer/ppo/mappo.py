"""MAPPO (Yu et al., 2022): PPO with a shared recurrent decentralized actor and a centralized critic on the global state."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from marlctl.agents.recurrent import AgentNet, masked_greedy
from marlctl.envs.base import EnvSpec
from marlctl.trainer.masked import masked_mean
from marlctl.trainer.ppo.core import (
    PPOOptions,
    RecurrentPPOBase,
    Rollout,
    categorical_logp_entropy,
    ppo_policy_loss,
    ppo_value_loss,
)
from marlctl.trainer.ppo.gae import gae
from marlctl.trainer.ppo.networks import CentralCritic, mappo_init, masked_logits, run_agents, sample_actions
from marlctl.trainer.registry import AlgorithmSpec

if TYPE_CHECKING:
    from marlctl.trainer.config import TrainConfig


class MAPPO(RecurrentPPOBase):
    """Actor ``pi(a_i | tau_i)`` = ``AgentNet`` (kind ``actor``), critic ``V_i(s)``; every agent's step is one
    PPO sample with its own advantage from GAE on the shared team reward."""

    name = "mappo"

    def _build(self, spec: EnvSpec) -> None:
        self.actor = AgentNet(self.agent_config)
        self.critic = CentralCritic(spec.state_dim, spec.n_agents, self.opts.critic_hidden_dim,
                                    obs_dim=spec.obs_dim if self.opts.critic_input == "state_obs" else 0)

    def _decentralized(self) -> AgentNet:
        return self.actor

    def _init_weights(self) -> None:
        mappo_init(self.actor, [(self.actor.head_out, 0.01)])
        mappo_init(self.critic, [(self.critic.net[-1], 1.0)])

    def _act(self, obs_BNO, state_BS, avail_BNA, prev_BN, hidden_BNH, mode):
        logits_BNA, hidden_BNH = run_agents(self.actor, obs_BNO, prev_BN, hidden_BNH)
        if mode == "sample":
            logits_BNA = masked_logits(logits_BNA, avail_BNA)
            actions_BN = sample_actions(logits_BNA, self.generator)
            logp_BN = torch.log_softmax(logits_BNA, -1).gather(-1, actions_BN[..., None]).squeeze(-1)
            return actions_BN, logp_BN, self.critic(state_BS, obs_BNO), hidden_BNH
        actions_BN = masked_greedy(logits_BNA, avail_BNA)
        return actions_BN, torch.zeros_like(actions_BN, dtype=torch.float32), logits_BNA.new_zeros(actions_BN.shape), hidden_BNH

    def _bootstrap_values(self, state_BS: torch.Tensor, obs_BNO: torch.Tensor) -> torch.Tensor:
        return self.critic(state_BS, obs_BNO)

    def _update(self, ro: Rollout) -> dict[str, float]:
        opts, (T, B, N) = self.opts, ro.actions.shape
        entropy_coef = self._entropy_coef()
        # Advantages: GAE per agent on the shared team reward, V_i(s) per agent.
        with torch.no_grad():
            per_agent = [x[:, :, None].expand(T, B, N).reshape(T, B * N)
                         for x in (ro.rewards, ro.terminated, ro.ended)]
            adv, ret = gae(per_agent[0], ro.values.reshape(T, B * N), ro.next_values.reshape(T, B * N),
                           per_agent[1], per_agent[2], self.cfg.learner.gamma, opts.gae_lambda)
            adv_TBN, ret_TBN = adv.view(T, B, N), ret.view(T, B, N)
            valid_TBN = ro.valid[:, :, None].expand(T, B, N)
            if opts.value_norm:
                self.value_norm.update(ret_TBN[valid_TBN])
            target_TBN = self.value_norm.normalize(ret_TBN) if opts.value_norm else ret_TBN
            if opts.advantage_norm:
                a = adv_TBN[valid_TBN]
                adv_TBN = (adv_TBN - a.mean()) / (a.std(unbiased=False) + 1e-8)
        sums = {"loss/policy": 0.0, "loss/value": 0.0, "loss/entropy": 0.0, "train/approx_kl": 0.0,
                "train/clip_frac": 0.0, "train/grad_norm_actor": 0.0, "train/grad_norm_critic": 0.0}
        n = 0
        for _ in range(opts.epochs):
            for idx in self._minibatches():
                mb = ro.envs(idx)
                mask = mb.valid[:, :, None]  # [T, b, 1]
                logits, _ = self._actor_sequence(self.actor, mb)  # [T, b, N, A]
                logp, entropy = categorical_logp_entropy(logits, mb.avail, mb.actions)
                # Policy loss
                pg_loss, kl, clip_frac = ppo_policy_loss(logp, mb.logp, adv_TBN[:, idx], opts.clip, mask)
                ent = masked_mean(entropy, mask)
                # Value loss
                t_, b_, S = mb.state.shape
                v_new = self.critic(mb.state.reshape(t_ * b_, S), mb.obs.reshape(t_ * b_, N, -1)).view(t_, b_, N)
                v_loss = ppo_value_loss(v_new, mb.values_norm, target_TBN[:, idx], opts, mask)
                loss = pg_loss - entropy_coef * ent + opts.value_loss_coef * v_loss
                gn_a, gn_c = self._step_optimizers(loss)
                for k, v in (("loss/policy", pg_loss), ("loss/value", v_loss), ("loss/entropy", ent),
                             ("train/approx_kl", kl), ("train/clip_frac", clip_frac),
                             ("train/grad_norm_actor", gn_a), ("train/grad_norm_critic", gn_c)):
                    sums[k] += float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                n += 1
        return {**{k: v / n for k, v in sums.items()}, "train/entropy_coef": entropy_coef}


def build_mappo(cfg: TrainConfig, spec: EnvSpec, device: torch.device) -> MAPPO:
    return MAPPO(cfg, spec, device)


MAPPO_SPEC = AlgorithmSpec(
    name="mappo",
    summary="MAPPO: PPO with shared recurrent decentralized actors and a centralized critic (baseline of TAD-PPO)",
    config_cls=PPOOptions,
    build=build_mappo,
    kind="policy",
)
