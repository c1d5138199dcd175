"""TAD-PPO (Ye et al.): PPO on the sequentially transformed MDP (TAD-PPO-T), distilled into decentralized actors (TAD-PPO).

Choices the paper leaves open, made here: the distillation (Eq. 6) runs alongside the transformation
stage on every rollout (the paper reports both policies over training), with the sampled joint actions
as targets; the critic is an MLP over the global state (+ agent id, + attention over ``a_<i``), not a
GRU; the GRU of the actor runs once per env step for all agents and only the attention and the head
run agent after agent, so action inference costs less than the paper's ``n``-fold (Table 4); each
position of the virtual order has its own coordination head (``per_agent_heads``: with a shared head
the later agents mirror the earlier ones instead of responding to their actions).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from marlctl.agents.recurrent import AgentNet, masked_greedy
from marlctl.envs.base import EnvSpec
from marlctl.trainer.config import env_family
from marlctl.trainer.errors import ConfigValueError
from marlctl.trainer.masked import masked_mean
from marlctl.trainer.ppo.core import (
    PPOOptions,
    RecurrentPPOBase,
    Rollout,
    categorical_logp_entropy,
    ppo_policy_loss,
    ppo_value_loss,
)
from marlctl.trainer.ppo.gae import deinterleave, gae, interleave_virtual_steps
from marlctl.trainer.ppo.networks import TADActor, TADCritic, mappo_init, masked_logits, sample_actions
from marlctl.trainer.registry import AlgorithmSpec

if TYPE_CHECKING:
    from marlctl.trainer.config import TrainConfig

# Appendix D.3: attention heads N_h and dimension D per map family.
SUPER_HARD_WIDE = ("MMM2", "corridor", "3h_vs_1b1z3h")  # N_h = 4, D = 8
SUPER_HARD_NARROW = ("3s5z_vs_3s6z", "6h_vs_8z", "27m_vs_30m")  # N_h = 3, D = 4


def paper_attention_dims(env_id: str) -> tuple[int, int]:
    """``(N_h, D)`` of appendix D.3: SMAC easy/hard 4x4, super hard 4x8 (MMM2, corridor, 3h_vs_1b1z3h) or 3x4
    (3s5z_vs_3s6z, 6h_vs_8z, 27m_vs_30m), GRF academy 4x6; other tasks (didactic games) 4x4."""
    family = env_family(env_id)
    scenario = env_id.split(":", 1)[1].split(",", 1)[0] if ":" in env_id else ""
    if family == "grf":
        return 4, 6
    if family in ("smax", "smac"):
        if scenario in SUPER_HARD_WIDE:
            return 4, 8
        if scenario in SUPER_HARD_NARROW:
            return 3, 4
    return 4, 4


@dataclass(frozen=True)
class TADPPOOptions(PPOOptions):
    """TAD-PPO's options: MAPPO's, plus the attention size and the distillation stage."""

    n_heads: int = 0
    """Attention heads N_h (0 = the paper's choice for the env, appendix D.3)."""
    head_dim: int = 0
    """Dimension D of each head's queries, keys and values (0 = the paper's choice, appendix D.3)."""
    distill_coef: float = 1.0
    """Weight of the distillation loss (Eq. 6: cross-entropy of the decentralized actors on the
    coordination policy's actions, summed over agents)."""
    distill_shares_encoder: bool = True
    """The distillation loss also trains the representation layer and GRU shared with the coordination
    policy (Sec. 5.2: "we share GRU and the representation layer"); False trains only the decentralized head."""
    distill_target: Literal["sample", "greedy", "probs"] = "sample"
    """What the decentralized actors imitate: ``sample`` - the joint actions the coordination policy sampled
    (Eq. 6, the cross-entropy to pi_jt); ``greedy`` - its greedy joint action on the same states (Algorithm 1
    distils the deterministic coordination policy); ``probs`` - Eq. 6 with the expectation over each agent's
    action taken exactly: the cross-entropy to ``pi_T(. | tau, a_<i)`` at the rollout's ``a_<i`` (the same
    objective as ``sample``, without the sampling noise). ``sample`` and ``greedy`` differ where pi_jt
    spreads over several optimal joint actions: a product of marginals of that mixture can pair one agent's
    part of one optimum with the other agent's part of another (matrix:tad10's matrix 4 has five optima on
    its anti-diagonal)."""
    distill_epochs: int = 0
    """Passes of the distillation loss alone after PPO's ``epochs`` on each rollout (0 = none): the decentralized
    actors learn from the updated coordination policy (with ``distill_shares_encoder = false`` only their head
    steps, on features computed once)."""
    distill_envs: float = 0.0
    """Fraction of the rollout's envs that the decentralized policy drives (its own samples). Their steps
    train the distillation only (PPO, the critic, the value and advantage normalisation mask them out),
    labelled with the coordination policy's distribution at the states the decentralized policy reaches
    (``probs``, whatever ``distill_target`` is): DAgger (Ross et al., 2011). A policy cloned on the
    coordination policy's states alone meets states it never learned once it acts on its own. Rounded to
    whole envs, at least one for each policy (0.25 of 2 envs is 1). Their env steps count toward the
    budget; ``train/decentralized_*`` reports their episodes."""
    per_agent_heads: bool = True
    """Each position of the virtual order gets its own coordination-policy head (the representation layer,
    GRU and attention stay shared). With one shared head the later agents mirror the earlier agents'
    marginal instead of responding to ``a_<i`` (measured on matrix:tad10, bench/results/tad/tad.md)."""
    transform_lambda: bool = True
    """Use lambda^(1/n) per virtual step, so ``gae_lambda`` keeps its meaning per env step (the discount is
    always gamma' = gamma^(1/n), Theorem 5.1)."""

    def validate(self) -> None:
        super().validate()
        if self.n_heads < 0 or self.head_dim < 0 or self.distill_coef < 0:
            raise ConfigValueError(
                f"[algo] n_heads={self.n_heads}, head_dim={self.head_dim}, distill_coef={self.distill_coef}: "
                "valid: n_heads/head_dim >= 1 (or 0 = the paper's value for the env), distill_coef >= 0"
            )
        if self.distill_epochs < 0:
            raise ConfigValueError(f"[algo] distill_epochs={self.distill_epochs!r}: valid: an integer >= 0")
        if not 0.0 <= self.distill_envs < 1.0:
            raise ConfigValueError(f"[algo] distill_envs={self.distill_envs!r}: valid: a fraction in [0, 1) of "
                                   "env.num_envs (0 = the coordination policy drives every env)")


class TADPPO(RecurrentPPOBase):
    """Transformation stage: the N agents decide one after another in a fixed virtual order within each
    env step, agent ``i`` seeing ``a_<i`` (batched over envs, a loop over agents only); every decision is
    one step of the transformed MDP Gamma(M) (Algorithm 1) with discount gamma^(1/n) and the env reward on
    the last one, and PPO learns on it. Distillation stage (Eq. 6), run alongside: the decentralized
    actors ``pi_E(a_i | tau_i)`` minimise the cross-entropy to the coordination policy's actions on the
    states it visits."""

    name = "tad-ppo"
    _first_value_only = True

    def _build(self, spec: EnvSpec) -> None:
        paper_heads, paper_dim = paper_attention_dims(spec.env_id)
        self.n_heads = self.opts.n_heads or paper_heads
        self.head_dim = self.opts.head_dim or paper_dim
        self.actor = TADActor(self.agent_config, self.n_heads, self.head_dim, self.opts.per_agent_heads)
        self.critic = TADCritic(spec.state_dim, spec.n_agents, spec.n_actions, self.n_heads, self.head_dim,
                                self.opts.critic_hidden_dim,
                                obs_dim=spec.obs_dim if self.opts.critic_input == "state_obs" else 0)
        n_dec = 0
        if self.opts.distill_envs > 0:  # whole envs, at least one for each policy
            if self.B < 2:
                raise ConfigValueError(
                    f"algo.distill_envs={self.opts.distill_envs} needs env.num_envs >= 2 (one env for the "
                    f"decentralized policy, one for PPO), got {self.B}: raise env.num_envs or set algo.distill_envs=0")
            n_dec = min(max(1, round(self.opts.distill_envs * self.B)), self.B - 1)
        self.decentralized_envs[:n_dec] = True
        self._dec_rows = torch.as_tensor(self.decentralized_envs, device=self.device) if n_dec else None

    def _decentralized(self) -> AgentNet:
        return self.actor.decentralized

    def _init_weights(self) -> None:
        mappo_init(self.actor, [(self.actor.decentralized.head_out, 0.01)])
        self.actor.coord_head.reset_parameters(out_gain=0.01)
        mappo_init(self.critic, [(self.critic.head[-1], 1.0)])

    def _act(self, obs_BNO, state_BS, avail_BNA, prev_BN, hidden_BNH, mode):
        logits_e_BNA, h_BNH = self.actor.encode(obs_BNO, prev_BN, hidden_BNH)  # one GRU call for all agents
        if mode == "greedy":  # TAD-PPO: decentralized execution
            actions_BN = masked_greedy(logits_e_BNA, avail_BNA)
            return actions_BN, torch.zeros_like(actions_BN, dtype=torch.float32), h_BNH.new_zeros(actions_BN.shape), h_BNH
        actions_BN, logp_BN = self._decide_in_order(h_BNH, avail_BNA, greedy=mode != "sample")
        if mode == "sample" and self._dec_rows is not None and len(self._dec_rows) == len(actions_BN):
            # DAgger envs: the decentralized policy acts (its log-probs and values are masked out of PPO).
            own = sample_actions(masked_logits(logits_e_BNA, avail_BNA), self.generator)
            actions_BN = torch.where(self._dec_rows[:, None], own, actions_BN)
        values_BN = self.critic(state_BS, actions_BN, obs_BNO) if mode == "sample" else torch.zeros_like(logp_BN)
        return actions_BN, logp_BN, values_BN, h_BNH

    def _decide_in_order(
        self, h_BNH: torch.Tensor, avail_BNA: torch.Tensor, greedy: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The coordination policy's joint action ``[B, N]`` and log-probs ``[B, N]``: agents decide one after
        another in the virtual order, agent ``i`` seeing ``a_<i`` (sampled, or greedy = TAD-PPO-T)."""
        B = h_BNH.shape[0]
        actions_BN = torch.zeros(B, self.N, dtype=torch.int64, device=h_BNH.device)
        logp_BN = torch.zeros(B, self.N, device=h_BNH.device)
        for i in range(self.N):
            logits_BA = masked_logits(self.actor.coord_logits_agent(h_BNH[:, i], actions_BN[:, :i]), avail_BNA[:, i])
            a_B = logits_BA.argmax(-1) if greedy else sample_actions(logits_BA, self.generator)
            actions_BN[:, i] = a_B
            logp_BN[:, i] = torch.log_softmax(logits_BA, -1).gather(-1, a_B[:, None]).squeeze(-1)
        return actions_BN, logp_BN

    def _bootstrap_values(self, state_BS: torch.Tensor, obs_BNO: torch.Tensor) -> torch.Tensor:
        return self.critic.first_value(state_BS, obs_BNO)[:, None].expand(-1, self.N)

    def _update(self, ro: Rollout) -> dict[str, float]:
        opts, (T, B, N) = self.opts, ro.actions.shape
        entropy_coef = self._entropy_coef()
        gamma_v = self.cfg.learner.gamma ** (1.0 / N)  # Theorem 5.1: gamma' = gamma^(1/n)
        lam_v = opts.gae_lambda ** (1.0 / N) if opts.transform_lambda else opts.gae_lambda
        with torch.no_grad():
            flat = interleave_virtual_steps(ro.rewards, ro.values, ro.next_values[:, :, 0], ro.terminated, ro.ended)
            adv_v, ret_v = gae(*flat, gamma=gamma_v, lam=lam_v)  # [T*N, B]
            adv_TBN, ret_TBN = deinterleave(adv_v, N), deinterleave(ret_v, N)
            ppo_TB = ro.valid & ~ro.decentralized  # steps the coordination policy took
            valid_TBN = ppo_TB[:, :, None].expand(T, B, N)
            if opts.value_norm:
                self.value_norm.update(ret_TBN[valid_TBN])
            target_TBN = self.value_norm.normalize(ret_TBN) if opts.value_norm else ret_TBN
            if opts.advantage_norm:
                a = adv_TBN[valid_TBN]
                adv_TBN = (adv_TBN - a.mean()) / (a.std(unbiased=False) + 1e-8)
        sums = {"loss/policy": 0.0, "loss/value": 0.0, "loss/entropy": 0.0, "loss/distill": 0.0,
                "train/approx_kl": 0.0, "train/clip_frac": 0.0, "train/grad_norm_actor": 0.0,
                "train/grad_norm_critic": 0.0}
        n = 0
        for _ in range(opts.epochs):
            for idx in self._minibatches():
                mb = ro.envs(idx)
                t_, b_ = mb.valid.shape
                mask = (mb.valid & ~mb.decentralized)[:, :, None]
                logits_e, h = self._actor_sequence(self.actor.decentralized, mb)  # [T, b, N, A], [T, b, N, H]
                H = h.shape[-1]
                coord = self.actor.coord_logits(h.reshape(t_ * b_, N, H), mb.actions.reshape(t_ * b_, N))
                logp, entropy = categorical_logp_entropy(coord.view(t_, b_, N, -1), mb.avail, mb.actions)
                # Policy loss: PPO on the transformed MDP, one sample per virtual step (t, i).
                pg_loss, kl, clip_frac = ppo_policy_loss(logp, mb.logp, adv_TBN[:, idx], opts.clip, mask)
                ent = masked_mean(entropy, mask)
                # Distillation loss (Eq. 6): -sum_i log pi_E(a_i | tau_i), a ~ pi_jt on the visited states.
                if not opts.distill_shares_encoder:
                    logits_e = self.actor.decentralized.head(h.detach())
                distill = masked_mean(self._distill_ce(logits_e, coord.view(t_, b_, N, -1), h.detach(), mb), mb.valid)
                # Value loss: V(s, a_<i) of every virtual step.
                S = mb.state.shape[-1]
                v_new = self.critic(mb.state.reshape(t_ * b_, S), mb.actions.reshape(t_ * b_, N),
                                    mb.obs.reshape(t_ * b_, N, -1)).view(t_, b_, N)
                v_loss = ppo_value_loss(v_new, mb.values_norm, target_TBN[:, idx], opts, mask)
                loss = (pg_loss - entropy_coef * ent + opts.distill_coef * distill
                        + opts.value_loss_coef * v_loss)
                gn_a, gn_c = self._step_optimizers(loss)
                for k, v in (("loss/policy", pg_loss), ("loss/value", v_loss), ("loss/entropy", ent),
                             ("loss/distill", distill), ("train/approx_kl", kl), ("train/clip_frac", clip_frac),
                             ("train/grad_norm_actor", gn_a), ("train/grad_norm_critic", gn_c)):
                    sums[k] += float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                n += 1
        out = {**{k: v / n for k, v in sums.items()}, "train/entropy_coef": entropy_coef}
        if opts.distill_epochs:
            out["loss/distill_extra"] = self._distill_only(ro)
        return out

    def _distill_ce(self, logits_e: torch.Tensor, coord: torch.Tensor, h: torch.Tensor, mb: Rollout) -> torch.Tensor:
        """Eq. 6's cross-entropy ``[t, b]`` of the decentralized actors (logits ``[t, b, N, A]``) to the target of
        ``distill_target`` from the coordination logits ``coord`` ``[t, b, N, A]``; on ``distill_envs`` rows
        (and with ``probs``) to the distribution ``pi_T(. | tau, a_<i)`` at the actions taken."""
        t_, b_, N = mb.actions.shape
        targets = mb.actions
        if self.opts.distill_target == "greedy":  # the deterministic coordination policy (Algorithm 1, line 6)
            with torch.no_grad():
                greedy, _ = self._decide_in_order(h.reshape(t_ * b_, N, -1), mb.avail.reshape(t_ * b_, N, -1),
                                                  greedy=True)
            targets = greedy.view(t_, b_, N)
        logp_e, _ = categorical_logp_entropy(logits_e, mb.avail, targets)
        ce = -logp_e.sum(-1)
        soft = mb.decentralized if self.opts.distill_target != "probs" else torch.ones_like(mb.valid)
        if soft.any():
            p_T = torch.softmax(coord.detach().masked_fill(~mb.avail, -1e10), -1)
            logp_all = torch.log_softmax(logits_e.masked_fill(~mb.avail, -1e10), -1)
            ce = torch.where(soft, -(p_T * logp_all.masked_fill(~mb.avail, 0.0)).sum(-1).sum(-1), ce)
        return ce

    def _distill_only(self, ro: Rollout) -> float:
        """``distill_epochs`` passes of the distillation loss alone after PPO's, on the updated coordination
        policy's labels; with a detached head the features are computed once and only the head steps."""
        opts, (T, B, N) = self.opts, ro.actions.shape
        with torch.no_grad():
            _, h_all = self._actor_sequence(self.actor.decentralized, ro)
            coord_all = self.actor.coord_logits(h_all.reshape(T * B, N, -1), ro.actions.reshape(T * B, N)).view(
                T, B, N, -1)
        total, n = 0.0, 0
        for _ in range(opts.distill_epochs):
            for idx in self._minibatches():
                mb = ro.envs(idx)
                if opts.distill_shares_encoder:
                    logits_e, _ = self._actor_sequence(self.actor.decentralized, mb)
                else:
                    logits_e = self.actor.decentralized.head(h_all[:, idx])
                distill = masked_mean(self._distill_ce(logits_e, coord_all[:, idx], h_all[:, idx], mb), mb.valid)
                self._step_optimizers(opts.distill_coef * distill)
                total += float(distill.detach())
                n += 1
        return total / n

    def _eval_metrics(self, n_episodes: int) -> dict[str, float]:
        """TAD-PPO (distilled, decentralized: ``eval/return``, ``eval/win_rate``), TAD-PPO-T (the joint
        coordination policy, sequential and greedy: ``eval/joint_*``) and the gap joint - decentralized, both
        policies on the same seeds (the gap is paired)."""
        dec = self._run_eval(n_episodes, "greedy")
        joint = self._run_eval(n_episodes, "joint")
        out = {f"eval/{k}": v for k, v in dec.items()}
        out.update({f"eval/joint_{k}": v for k, v in joint.items()})
        out["eval/gap_return"] = joint["return"] - dec["return"]
        out["eval/gap_win_rate"] = joint["win_rate"] - dec["win_rate"]
        return out


def build_tad_ppo(cfg: TrainConfig, spec: EnvSpec, device: torch.device) -> TADPPO:
    return TADPPO(cfg, spec, device)


TAD_PPO_SPEC = AlgorithmSpec(
    name="tad-ppo",
    summary="TAD-PPO: PPO on the sequentially transformed MDP, distilled into decentralized actors",
    config_cls=TADPPOOptions,
    build=build_tad_ppo,
    kind="policy",
)
