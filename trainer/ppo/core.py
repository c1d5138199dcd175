"""Shared machinery of MAPPO and TAD-PPO: options, on-policy rollouts over batched envs, PPO losses, greedy evaluation."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from marlctl.agents.recurrent import AgentNet
from marlctl.envs.base import BatchStep, EnvSpec
from marlctl.trainer.agent_unroll import agent_net_config
from marlctl.trainer.algorithm import IterationStats
from marlctl.trainer.errors import ConfigValueError
from marlctl.trainer.masked import masked_mean
from marlctl.trainer.optim import make_optimizer
from marlctl.trainer.ppo.networks import CRITIC_INPUTS, run_agents
from marlctl.trainer.ppo.value_norm import ValueNorm
from marlctl.trainer.rollout import derive_seed
from marlctl.trainer.running_stats import RunningMeanStd
from marlctl.trainer.step_tensors import step_tensor
from torch import nn

if TYPE_CHECKING:
    from marlctl.trainer.config import TrainConfig


@dataclass(frozen=True)
class PPOOptions:
    """MAPPO's own options (the ``[algo]`` section); defaults follow MAPPO (Yu et al., 2022) on SMAC.
    The discount is ``learner.gamma``, shared with every method."""

    gae_lambda: float = 0.95
    """GAE lambda."""
    clip: float = 0.2
    """PPO ratio clip epsilon (also the value-clipping range)."""
    epochs: int = 5
    """Passes over each rollout (MAPPO: 15 on easy maps, 5 on hard ones)."""
    minibatches: int = 1
    """Minibatches per epoch, split along the environment axis (whole sequences stay together)."""
    entropy_coef: float = 0.01
    """Entropy bonus weight (the final weight when ``entropy_anneal_steps`` > 0)."""
    entropy_coef_start: float = 0.01
    """Entropy bonus weight at step 0 when annealing; ignored when ``entropy_anneal_steps`` = 0."""
    entropy_anneal_steps: int = 0
    """Env steps over which the entropy weight goes linearly from ``entropy_coef_start`` to ``entropy_coef``
    (0 = a constant ``entropy_coef``, as MAPPO). A high start keeps every action sampled while the policy's
    logits learn how each action's advantage depends on the context (configs/env/matrix.policy.toml)."""
    value_loss_coef: float = 1.0
    """Weight of the critic loss."""
    huber_delta: float = 10.0
    """Huber loss delta of the critic (0 = squared error)."""
    clip_value_loss: bool = True
    """Clip the critic's change around the rollout-time prediction (MAPPO's ``use_clipped_value_loss``)."""
    value_norm: bool = True
    """Normalize value targets with running statistics (MAPPO's ``ValueNorm``)."""
    advantage_norm: bool = True
    """Standardize advantages over the whole rollout."""
    critic_lr: float = 5e-4
    """Critic learning rate (the actor uses ``optim.lr``)."""
    critic_hidden_dim: int = 64
    """Width of the critic's layers."""
    critic_input: str = "state"
    """What the centralized critic reads besides agent ``i``'s one-hot id: ``state`` (the env's global state,
    MAPPO's "EP" state) or ``state_obs`` (the global state and agent ``i``'s own observation: MAPPO's
    agent-specific "AS" state, its reference code's SMAC default; Yu et al. 2022, Suggestion 2)."""
    input_norm: bool = True
    """Normalize actor observations and critic states with running statistics (MAPPO's feature
    normalization), refreshed after every update and baked into the networks (and the exported actor)."""
    orthogonal_init: bool = True
    """MAPPO's orthogonal initialisation (policy heads at gain 0.01)."""
    eval_envs: int = 16
    """Batched environments used by greedy evaluation (at most ``eval_episodes``)."""

    def validate(self) -> None:
        checks = {
            "gae_lambda": 0.0 <= self.gae_lambda <= 1.0,
            "clip": self.clip > 0.0, "epochs": self.epochs >= 1, "minibatches": self.minibatches >= 1,
            "entropy_coef": self.entropy_coef >= 0.0, "entropy_coef_start": self.entropy_coef_start >= 0.0,
            "entropy_anneal_steps": self.entropy_anneal_steps >= 0, "value_loss_coef": self.value_loss_coef >= 0.0,
            "huber_delta": self.huber_delta >= 0.0, "critic_lr": self.critic_lr > 0.0,
            "critic_hidden_dim": self.critic_hidden_dim >= 1, "eval_envs": self.eval_envs >= 1,
        }
        if self.critic_input not in CRITIC_INPUTS:
            raise ConfigValueError(f"algo.critic_input={self.critic_input!r}; valid: {', '.join(CRITIC_INPUTS)}")
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigValueError(
                f"[algo] out of range: {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}; valid: gae_lambda in [0, 1], clip/critic_lr > 0, epochs/minibatches/critic_hidden_dim/eval_envs >= 1, "
                "entropy_coef/entropy_coef_start/entropy_anneal_steps/value_loss_coef/huber_delta >= 0"
            )


@dataclass
class Rollout:
    """``T`` batched steps of ``B`` envs, agent-major, as collected by the sampling policy."""

    obs: torch.Tensor  # [T, B, N, O]
    state: torch.Tensor  # [T, B, S]
    avail: torch.Tensor  # [T, B, N, A] bool
    prev_actions: torch.Tensor  # [T, B, N] int64 (-1 at an episode's first step)
    actions: torch.Tensor  # [T, B, N] int64
    logp: torch.Tensor  # [T, B, N] log-prob of each action under the sampling policy
    values: torch.Tensor  # [T, B, N] value estimates (env units)
    values_norm: torch.Tensor  # [T, B, N] raw critic outputs (normalized units when value_norm)
    next_values: torch.Tensor  # [T, B, N] value of each step's successor (bootstrap on truncation)
    rewards: torch.Tensor  # [T, B]
    terminated: torch.Tensor  # [T, B] bool
    ended: torch.Tensor  # [T, B] bool (terminated or truncated)
    starts: torch.Tensor  # [T, B] bool: first step of an episode (recurrent state reset before it)
    valid: torch.Tensor  # [T, B] bool: step belongs to the data (episodes mode drops steps after the first episode)
    decentralized: torch.Tensor  # [T, B] bool: the decentralized policy acted, not the one PPO learns (TAD-PPO's
    # distillation envs): PPO masks these steps out
    h0: torch.Tensor  # [B, N, H] actor hidden state before step 0

    def envs(self, idx: torch.Tensor) -> Rollout:
        """The sub-rollout of environments ``idx`` (a minibatch of whole sequences)."""
        return Rollout(**{k: (v[idx] if k == "h0" else v[:, idx]) for k, v in vars(self).items()})


def huber_or_mse(err: torch.Tensor, delta: float) -> torch.Tensor:
    return F.huber_loss(err, torch.zeros_like(err), reduction="none", delta=delta) if delta > 0 else 0.5 * err**2


def ppo_policy_loss(
    logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip: float, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate ``-E[min(r A, clip(r, 1-eps, 1+eps) A)]``, approx KL and clip fraction."""
    ratio = torch.exp(logp_new - logp_old)
    surrogate = torch.min(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1.0) - (logp_new - logp_old), mask)
        clip_frac = masked_mean(((ratio - 1.0).abs() > clip).float(), mask)
    return -masked_mean(surrogate, mask), approx_kl, clip_frac


def ppo_value_loss(
    v_new: torch.Tensor, v_old: torch.Tensor, target: torch.Tensor, opts: PPOOptions, mask: torch.Tensor
) -> torch.Tensor:
    """MAPPO's critic loss: Huber on the target error, the larger of the clipped and unclipped error."""
    loss = huber_or_mse(target - v_new, opts.huber_delta)
    if opts.clip_value_loss:
        v_clipped = v_old + (v_new - v_old).clamp(-opts.clip, opts.clip)
        loss = torch.max(loss, huber_or_mse(target - v_clipped, opts.huber_delta))
    return masked_mean(loss, mask)


def categorical_logp_entropy(
    logits_XA: torch.Tensor, avail_XA: torch.Tensor, actions_X: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``actions`` and entropy under a categorical over the available actions only."""
    logp_all = torch.log_softmax(logits_XA.masked_fill(~avail_XA, -1e10), dim=-1)
    probs = logp_all.exp()
    entropy = -(probs * logp_all.masked_fill(~avail_XA, 0.0)).sum(-1)
    return logp_all.gather(-1, actions_X.unsqueeze(-1)).squeeze(-1), entropy


def clone_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class RecurrentPPOBase:
    """On-policy actor-critic on ``B`` batched envs with a recurrent, parameter-shared actor.

    Subclasses provide the networks and three hooks: ``_act`` (sample or pick a joint action),
    ``_bootstrap_values`` (value of a state no action has been taken in) and ``_update``.
    """

    name = "ppo"

    def __init__(self, cfg: TrainConfig, spec: EnvSpec, device: torch.device) -> None:
        from marlctl.envs import make_batched_env

        self.cfg, self.opts, self.spec, self.device = cfg, cfg.algo, spec, torch.device(device)
        self.seed = cfg.run.seed
        self.N, self.A = spec.n_agents, spec.n_actions
        self.B = cfg.env.num_envs
        if cfg.env.rollout == "episodes":
            self.T = spec.episode_limit
        else:
            self.T = cfg.env.steps_per_iteration or spec.episode_limit
        if self.opts.minibatches > self.B:
            raise ConfigValueError(
                f"algo.minibatches={self.opts.minibatches} exceeds env.num_envs={self.B}: minibatches split the "
                f"environment axis; valid: 1..{self.B}"
            )
        torch.manual_seed(derive_seed(self.seed, 0))  # network initialisation
        self.agent_config = agent_net_config(cfg.agent, spec)
        self.decentralized_envs = np.zeros(self.B, dtype=bool)
        """Envs of the rollout driven by the decentralized policy (``_build`` sets them: TAD-PPO's ``distill_envs``)."""
        self._build(spec)
        if self.opts.orthogonal_init:
            self._init_weights()
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.value_norm = ValueNorm().to(self.device)
        self.obs_stats = RunningMeanStd(spec.obs_dim).to(self.device)
        self.state_stats = RunningMeanStd(spec.state_dim).to(self.device)
        self.actor_optim = make_optimizer(cfg.optim, self.actor.parameters())
        self.critic_optim = make_optimizer(cfg.optim, self.critic.parameters(), lr=self.opts.critic_lr)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(derive_seed(self.seed, 1))
        self.env = make_batched_env(cfg.env.env_id, self.B)
        self._eval_envs: dict[int, Any] = {}
        self.iteration = 0
        self.env_steps = 0
        self.optimizer_steps = 0  # every _step_optimizers call: PPO's minibatch steps and any extra passes
        self.evals = 0  # evaluations so far: each one plays episodes of its own seed
        self._current: BatchStep | None = None

    # ------------------------------------------------------------------ hooks

    actor: nn.Module
    critic: nn.Module

    def _build(self, spec: EnvSpec) -> None:
        raise NotImplementedError

    def _decentralized(self) -> AgentNet:
        """The per-agent network that is exported and served."""
        raise NotImplementedError

    def _init_weights(self) -> None:
        """Apply MAPPO's initialisation to the actor and the critic."""
        raise NotImplementedError

    def _act(
        self, obs_BNO: torch.Tensor, state_BS: torch.Tensor, avail_BNA: torch.Tensor, prev_BN: torch.Tensor,
        hidden_BNH: torch.Tensor, mode: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``mode`` = ``sample`` (training), ``greedy`` (decentralized) or ``joint`` (greedy coordination policy).
        Returns actions ``[B, N]``, their log-probs ``[B, N]``, raw critic outputs ``[B, N]``, next hidden ``[B, N, H]``."""
        raise NotImplementedError

    def _bootstrap_values(self, state_BS: torch.Tensor, obs_BNO: torch.Tensor) -> torch.Tensor:
        """Raw critic outputs ``[B, N]`` of the first decision in ``state_BS`` (successor values)."""
        raise NotImplementedError

    def _update(self, ro: Rollout) -> dict[str, float]:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers

    def _denorm(self, v: torch.Tensor) -> torch.Tensor:
        return self.value_norm.denormalize(v) if self.opts.value_norm else v

    def _entropy_coef(self) -> float:
        """The entropy bonus weight for an update made after ``env_steps`` steps (linear anneal, then constant)."""
        o = self.opts
        if o.entropy_anneal_steps <= 0:
            return o.entropy_coef
        frac = min(1.0, self.env_steps / o.entropy_anneal_steps)
        return o.entropy_coef_start + frac * (o.entropy_coef - o.entropy_coef_start)

    def _tensor(self, x: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.tensor(x, device=self.device, dtype=dtype)  # a copy: envs may reuse their arrays

    def _views(self, step: BatchStep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``obs``, ``state``, ``avail`` of a step on the learner's device (shared through DLPack where they can be)."""
        return (step_tensor(step, "obs", self.device, torch.float32),
                step_tensor(step, "state", self.device, torch.float32),
                step_tensor(step, "avail", self.device, torch.bool))

    def _actor_sequence(
        self, net: AgentNet, ro: Rollout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-run the shared recurrent actor over the rollout: scores ``[T, B, N, A]`` and GRU outputs ``[T, B, N, H]``,
        resetting the recurrent state where an episode starts."""
        h_BNH = ro.h0
        scores, hiddens = [], []
        for t in range(ro.obs.shape[0]):
            h_BNH = h_BNH * (~ro.starts[t]).to(h_BNH.dtype)[:, None, None]
            s_BNA, h_BNH = run_agents(net, ro.obs[t], ro.prev_actions[t], h_BNH)
            scores.append(s_BNA)
            hiddens.append(h_BNH)
        return torch.stack(scores), torch.stack(hiddens)

    def _minibatches(self) -> list[torch.Tensor]:
        perm = torch.randperm(self.B, generator=self.generator, device=self.device)
        return list(perm.chunk(self.opts.minibatches))

    def _step_optimizers(self, loss: torch.Tensor) -> tuple[float, float]:
        self.actor_optim.zero_grad(set_to_none=True)
        self.critic_optim.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.optim.grad_clip
        limit = clip if clip > 0 else math.inf
        # Each optimizer's own parameter list (no module walk per step) and the multi-tensor norm: on the CPU the
        # default per-tensor loop was a fifth of a didactic game's optimizer step.
        gn_a = nn.utils.clip_grad_norm_([p for g in self.actor_optim.param_groups for p in g["params"]], limit,
                                        foreach=True)
        gn_c = nn.utils.clip_grad_norm_([p for g in self.critic_optim.param_groups for p in g["params"]], limit,
                                        foreach=True)
        self.actor_optim.step()
        self.critic_optim.step()
        self.optimizer_steps += 1
        return float(gn_a), float(gn_c)

    # ------------------------------------------------------------------ rollout

    @torch.no_grad()
    def _collect(self) -> tuple[Rollout, dict[str, float], int, int]:
        """One iteration's experience. Returns the rollout, episode metrics, env steps and finished episodes."""
        episodes_mode = self.cfg.env.rollout == "episodes"
        B, N, dev = self.B, self.N, self.device
        if episodes_mode or self._current is None:
            self._current = self.env.reset(seed=derive_seed(self.seed, 2, self.iteration))
            self._hidden = self._decentralized().initial_hidden(B * N, dev).view(B, N, -1)
            self._prev = torch.full((B, N), -1, dtype=torch.int64, device=dev)
            self._starts = torch.ones(B, dtype=torch.bool, device=dev)
            self._ep_return = np.zeros(B)
        keys = ("obs", "state", "avail", "prev_actions", "actions", "logp", "values_norm", "boot_norm",
                "truncated_only", "rewards", "terminated", "ended", "starts", "valid", "decentralized")
        dec_t = self._tensor(self.decentralized_envs)
        buf: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        h0 = self._hidden.clone()
        active = np.ones(B, dtype=bool)
        returns, wins, scores, dec_returns, dec_wins = [], [], [], [], []
        t_inf = t_sim = 0.0
        steps = 0
        for _t in range(self.T):
            cur = self._current
            obs, state, avail = self._views(cur)
            t0 = time.perf_counter()
            actions, logp, v_norm, hidden_out = self._act(obs, state, avail, self._prev, self._hidden, "sample")
            actions_np = actions.cpu().numpy()
            t1 = time.perf_counter()
            nxt = self.env.step(actions_np)
            t2 = time.perf_counter()
            t_inf += t1 - t0
            t_sim += t2 - t1
            steps += B
            trunc_only = nxt.truncated & ~nxt.terminated
            boot = torch.zeros(B, N, device=dev)
            if trunc_only.any():
                idx = np.flatnonzero(trunc_only)
                boot[idx] = self._bootstrap_values(self._tensor(nxt.final_state[idx], torch.float32),
                                                   self._tensor(nxt.final_obs[idx], torch.float32))
            ended = nxt.done
            for k, v in (("obs", obs), ("state", state), ("avail", avail), ("prev_actions", self._prev),
                         ("actions", actions), ("logp", logp), ("values_norm", v_norm), ("boot_norm", boot),
                         ("truncated_only", self._tensor(trunc_only)), ("rewards", self._tensor(nxt.reward, torch.float32)),
                         ("terminated", self._tensor(nxt.terminated)), ("ended", self._tensor(ended)),
                         ("starts", self._starts), ("valid", self._tensor(active.copy())), ("decentralized", dec_t)):
                buf[k].append(v)
            self._ep_return += nxt.reward
            done_idx = np.flatnonzero(ended & active & ~self.decentralized_envs)
            returns.extend(self._ep_return[done_idx].tolist())
            wins.extend(nxt.won[done_idx].tolist())
            scores.extend(nxt.score[done_idx].tolist())
            dec_idx = np.flatnonzero(ended & active & self.decentralized_envs)
            dec_returns.extend(self._ep_return[dec_idx].tolist())
            dec_wins.extend(nxt.won[dec_idx].tolist())
            self._ep_return[ended] = 0.0
            ended_t = self._tensor(ended)
            self._hidden = hidden_out * (~ended_t).to(hidden_out.dtype)[:, None, None]
            self._prev = torch.where(ended_t[:, None], torch.full_like(actions, -1), actions)
            self._starts = ended_t
            self._current = nxt
            if episodes_mode:
                active &= ~ended
                if not active.any():
                    break
        last_norm = self._bootstrap_values(self._tensor(self._current.state, torch.float32),
                                           self._tensor(self._current.obs, torch.float32))
        st = {k: torch.stack(v) for k, v in buf.items()}
        values_norm = st["values_norm"]
        # Successor values: the next step's, the last state's after the rollout, the final state's where truncated.
        next_norm = torch.cat([values_norm[1:, :, :1].expand(-1, -1, N) if self._first_value_only
                               else values_norm[1:], last_norm[None]], dim=0)
        next_norm = torch.where(st["truncated_only"][:, :, None], st["boot_norm"], next_norm)
        ro = Rollout(
            obs=st["obs"], state=st["state"], avail=st["avail"], prev_actions=st["prev_actions"],
            actions=st["actions"], logp=st["logp"], values=self._denorm(values_norm), values_norm=values_norm,
            next_values=self._denorm(next_norm), rewards=st["rewards"], terminated=st["terminated"],
            ended=st["ended"], starts=st["starts"], valid=st["valid"], decentralized=st["decentralized"], h0=h0,
        )
        metrics = {"time/inference": t_inf, "time/simulation": t_sim}
        if returns:
            metrics.update({"train/return": float(np.mean(returns)), "train/win_rate": float(np.mean(wins)),
                            "train/score": float(np.mean(scores))})
        if dec_returns:  # training episodes of the decentralized policy (TAD-PPO's distillation envs)
            metrics.update({"train/decentralized_return": float(np.mean(dec_returns)),
                            "train/decentralized_win_rate": float(np.mean(dec_wins))})
        return ro, metrics, steps, len(returns) + len(dec_returns)

    _first_value_only = False
    """True where the successor of an env step is valued by the first virtual step only (TAD)."""

    # ------------------------------------------------------------------ Algorithm

    def train_iteration(self) -> IterationStats:
        self.actor.train()
        self.critic.train()
        ro, metrics, steps, episodes = self._collect()
        t0 = time.perf_counter()
        steps_before = self.optimizer_steps
        metrics.update(self._update(ro))
        if self.opts.input_norm:
            self._refresh_input_norm(ro)
        metrics["time/training"] = time.perf_counter() - t0
        self.iteration += 1
        self.env_steps += steps
        return IterationStats(env_steps=steps, episodes=episodes,
                              updates=self.optimizer_steps - steps_before, metrics=metrics)

    @torch.no_grad()
    def _refresh_input_norm(self, ro: Rollout) -> None:
        """Fold this rollout's inputs into the running statistics and bake them into the networks; done after
        the update so the policy that collected a rollout is the one whose ratios PPO computes."""
        valid = ro.valid
        self.obs_stats.update(ro.obs[valid])
        self.state_stats.update(ro.state[valid])
        net = self._decentralized()
        net.obs_mean.copy_(self.obs_stats.mean_std()[0])
        net.obs_std.copy_(self.obs_stats.mean_std()[1])
        self.critic.set_input_stats(*self.state_stats.mean_std(), *self.obs_stats.mean_std())

    @torch.no_grad()
    def _run_eval(self, n_episodes: int, mode: str) -> dict[str, float]:
        """Greedy episodes: env ``b`` of ``E`` plays its first ``n//E (+1)`` episodes, so short episodes are not favoured."""
        from marlctl.envs import make_batched_env

        if n_episodes < 1:
            raise ConfigValueError(f"evaluation needs n_episodes >= 1, got {n_episodes}")
        E = min(n_episodes, self.opts.eval_envs)
        if E not in self._eval_envs:
            self._eval_envs[E] = make_batched_env(self.cfg.env.env_id, E)
        env = self._eval_envs[E]
        quota = np.full(E, n_episodes // E) + (np.arange(E) < n_episodes % E)
        done_count = np.zeros(E, dtype=np.int64)
        cur = env.reset(seed=derive_seed(self.seed, 3, self.evals))
        hidden = self._decentralized().initial_hidden(E * self.N, self.device).view(E, self.N, -1)
        prev = torch.full((E, self.N), -1, dtype=torch.int64, device=self.device)
        ep_ret, ep_len = np.zeros(E), np.zeros(E, dtype=np.int64)
        returns, wins, scores, lengths = [], [], [], []
        for _ in range((int(quota.max()) + 1) * self.spec.episode_limit + 1):
            if (done_count >= quota).all():
                break
            actions, _, _, hidden = self._act(*self._views(cur), prev, hidden, mode)
            cur = env.step(actions.cpu().numpy())
            ep_ret += cur.reward
            ep_len += 1
            ended = cur.done
            for b in np.flatnonzero(ended & (done_count < quota)):
                returns.append(ep_ret[b])
                wins.append(bool(cur.won[b]))
                scores.append(float(cur.score[b]))
                lengths.append(int(ep_len[b]))
            done_count += ended
            ep_ret[ended], ep_len[ended] = 0.0, 0
            ended_t = self._tensor(ended)
            hidden = hidden * (~ended_t).to(hidden.dtype)[:, None, None]
            prev = torch.where(ended_t[:, None], torch.full_like(actions, -1), actions)
        return {"return": float(np.mean(returns)), "return_min": float(np.min(returns)),
                "win_rate": float(np.mean(wins)), "score": float(np.mean(scores)),
                "episode_length": float(np.mean(lengths)), "episodes": float(len(returns))}

    def evaluate(self, n_episodes: int) -> dict[str, float]:
        """Greedy evaluation on this evaluation's own seeds (a new set each time, as for the value methods)."""
        self.actor.eval()
        out = self._eval_metrics(n_episodes)
        self.evals += 1
        return out

    def _eval_metrics(self, n_episodes: int) -> dict[str, float]:
        """Hook: decentralized execution, every agent acting on its own observation and history only."""
        return {f"eval/{k}": v for k, v in self._run_eval(n_episodes, "greedy").items()}

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizers, value normalizer, sampling RNG and counters. A resumed run starts fresh
        episodes (``steps`` rollouts) from a seed derived from the iteration; ``episodes`` rollouts resume exactly."""
        return {
            "actor": clone_state_dict(self.actor), "critic": clone_state_dict(self.critic),
            "actor_optim": self.actor_optim.state_dict(), "critic_optim": self.critic_optim.state_dict(),
            "value_norm": clone_state_dict(self.value_norm), "obs_stats": clone_state_dict(self.obs_stats),
            "state_stats": clone_state_dict(self.state_stats), "generator": self.generator.get_state().cpu(),
            "torch_rng": torch.get_rng_state(), "iteration": self.iteration, "env_steps": self.env_steps,
            "evals": self.evals,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.value_norm.load_state_dict(state["value_norm"])
        self.obs_stats.load_state_dict(state["obs_stats"])
        self.state_stats.load_state_dict(state["state_stats"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])
        self.evals = int(state.get("evals", 0))  # checkpoints written before evals were counted
        self._current = None

    def agent_bundle(self) -> dict[str, Any]:
        """The decentralized actor (kind ``actor``): what export turns into one ONNX file per agent."""
        net = self._decentralized()
        return {"kind": "actor", "config": net.config.to_dict(), "state_dict": clone_state_dict(net)}

    def close(self) -> None:
        """Close the training env and the evaluation envs (GRF engine processes, live StarCraft II)."""
        for env in (self.env, *self._eval_envs.values()):
            env.close()
        self._eval_envs.clear()
