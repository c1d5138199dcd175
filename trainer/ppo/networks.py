"""Actor and critic networks of MAPPO and TAD-PPO (parameter sharing across agents, one-hot agent ids)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from marlctl.agents.recurrent import AgentNet, AgentNetConfig
from marlctl.trainer.ppo.attention import PrecedingActionAttention
from torch import nn


def run_agents(
    net: AgentNet, obs_BNO: torch.Tensor, prev_action_BN: torch.Tensor, hidden_BNH: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared per-agent network over all ``N`` agents of ``B`` envs: scores ``[B, N, A]``, hidden ``[B, N, H]``."""
    B, N, obs_dim = obs_BNO.shape
    ids_BN = torch.arange(N, device=obs_BNO.device).expand(B, N)
    scores, hidden = net(
        obs_BNO.reshape(B * N, obs_dim), prev_action_BN.reshape(B * N), ids_BN.reshape(B * N),
        hidden_BNH.reshape(B * N, -1),
    )
    return scores.view(B, N, -1), hidden.view(B, N, -1)


def mappo_init(module: nn.Module, output_layers: list[tuple[nn.Linear, float]]) -> None:
    """MAPPO's initialisation: orthogonal weights (gain sqrt(2) before ReLUs, 1 in the GRU), zero biases,
    and a small gain on the policy heads (0.01) so every policy starts near uniform."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, gain=nn.init.calculate_gain("relu"))
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GRUCell):
            nn.init.orthogonal_(m.weight_ih)
            nn.init.orthogonal_(m.weight_hh)
            nn.init.zeros_(m.bias_ih)
            nn.init.zeros_(m.bias_hh)
    for layer, gain in output_layers:
        nn.init.orthogonal_(layer.weight, gain=gain)
        nn.init.zeros_(layer.bias)


CRITIC_INPUTS = ("state", "state_obs")


class _CriticInput(nn.Module):
    """The per-agent input of a centralized critic, ``[B, N, D]``: the global state, agent ``i``'s own observation
    when ``obs_dim > 0`` (``critic_input = "state_obs"``: MAPPO's agent-specific global state, the reference
    code's SMAC default) and agent ``i``'s one-hot id; state and observation normalized with the statistics the
    trainer bakes in (``set_input_stats``)."""

    def __init__(self, state_dim: int, n_agents: int, obs_dim: int = 0) -> None:
        super().__init__()
        self.n_agents, self.obs_dim = n_agents, obs_dim
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        if obs_dim:
            self.register_buffer("obs_mean", torch.zeros(obs_dim))
            self.register_buffer("obs_std", torch.ones(obs_dim))
        self.input_dim = state_dim + obs_dim + n_agents

    def critic_input(self, state_BS: torch.Tensor, obs_BNO: torch.Tensor | None) -> torch.Tensor:
        B, S = state_BS.shape
        parts = [((state_BS - self.state_mean) / self.state_std)[:, None, :].expand(B, self.n_agents, S)]
        if self.obs_dim:
            if obs_BNO is None:
                raise ValueError("this critic reads each agent's observation (critic_input = state_obs): pass obs_BNO")
            parts.append((obs_BNO - self.obs_mean) / self.obs_std)
        parts.append(torch.eye(self.n_agents, device=state_BS.device).expand(B, -1, -1))
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def set_input_stats(self, state_mean: torch.Tensor, state_std: torch.Tensor, obs_mean: torch.Tensor,
                        obs_std: torch.Tensor) -> None:
        self.state_mean.copy_(state_mean)
        self.state_std.copy_(state_std)
        if self.obs_dim:
            self.obs_mean.copy_(obs_mean)
            self.obs_std.copy_(obs_std)


class CentralCritic(_CriticInput):
    """MAPPO's centralized critic: ``V_i(s)`` (or ``V_i(s, o_i)``) from the critic input and agent ``i``'s one-hot
    id (shared MLP)."""

    def __init__(self, state_dim: int, n_agents: int, hidden_dim: int = 64, obs_dim: int = 0) -> None:
        super().__init__(state_dim, n_agents, obs_dim)
        self.net = nn.Sequential(
            nn.Linear(self.input_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, 1),
        )

    def forward(self, state_BS: torch.Tensor, obs_BNO: torch.Tensor | None = None) -> torch.Tensor:
        """Values ``[B, N]`` (normalized units when the trainer uses value normalization)."""
        return self.net(self.critic_input(state_BS, obs_BNO)).squeeze(-1)


class AgentwiseMLP(nn.Module):
    """``n_agents`` independent two-layer MLPs (Linear, ReLU, Linear) evaluated in one batched einsum: agent
    ``i``'s input goes through agent ``i``'s weights only. ``n_agents = 1`` is one MLP shared by every agent."""

    def __init__(self, n_agents: int, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_agents, in_dim, hidden_dim))
        self.b1 = nn.Parameter(torch.zeros(n_agents, hidden_dim))
        self.w2 = nn.Parameter(torch.empty(n_agents, hidden_dim, out_dim))
        self.b2 = nn.Parameter(torch.zeros(n_agents, out_dim))
        self.reset_parameters()

    def reset_parameters(self, out_gain: float = 1.0) -> None:
        """Orthogonal weights per agent (ReLU gain on the first layer, ``out_gain`` on the output), zero biases."""
        for i in range(self.w1.shape[0]):
            nn.init.orthogonal_(self.w1.data[i].T, gain=nn.init.calculate_gain("relu"))
            nn.init.orthogonal_(self.w2.data[i].T, gain=out_gain)
        nn.init.zeros_(self.b1)
        nn.init.zeros_(self.b2)

    def forward(self, x_BNI: torch.Tensor) -> torch.Tensor:
        """Every agent at once: ``[B, N, I] -> [B, N, O]`` (agent ``i`` uses weights ``i``, or the shared ones)."""
        n = x_BNI.shape[1] if self.w1.shape[0] > 1 else 1
        w1, b1, w2, b2 = (p.expand(x_BNI.shape[1], *p.shape[1:]) if n == 1 else p
                          for p in (self.w1, self.b1, self.w2, self.b2))
        z_BNH = F.relu(torch.einsum("bni,nih->bnh", x_BNI, w1) + b1)
        return torch.einsum("bnh,nho->bno", z_BNH, w2) + b2

    def forward_agent(self, x_BI: torch.Tensor, agent: int) -> torch.Tensor:
        """One agent: ``[B, I] -> [B, O]``."""
        k = agent if self.w1.shape[0] > 1 else 0
        return F.relu(x_BI @ self.w1[k] + self.b1[k]) @ self.w2[k] + self.b2[k]


class TADActor(nn.Module):
    """TAD-PPO's actor (Fig. 1): the decentralized ``AgentNet`` (own observation, own previous action,
    agent id -> MLP -> GRU -> head: TAD-PPO's distilled policy ``pi_E``) whose representation layer and
    GRU are shared with the coordination policy ``pi_T(a_i | tau_i, a_<i)`` = head over
    ``[h_i, attention(h_i, a_<i)]`` (TAD-PPO-T). Only ``decentralized`` is exported and served.

    ``per_agent_heads``: each position of the virtual order has its own coordination head. With one head
    shared by all agents, the later agent's policy follows the earlier agent's marginal (their hidden
    vectors differ only by the agent id), so it does not learn to respond to ``a_<i`` and the transformed
    MDP loses the best response it exists for (matrix:tad10: agent 2 copies agent 1's marginal)."""

    def __init__(self, config: AgentNetConfig, n_heads: int, head_dim: int, per_agent_heads: bool = True) -> None:
        super().__init__()
        self.decentralized = AgentNet(config)
        H, A = config.hidden_dim, config.n_actions
        self.attention = PrecedingActionAttention(H, A, config.n_agents, n_heads, head_dim, mlp_dim=H)
        self.coord_head = AgentwiseMLP(config.n_agents if per_agent_heads else 1, H + self.attention.out_dim, H, A)

    def encode(
        self, obs_BNO: torch.Tensor, prev_action_BN: torch.Tensor, hidden_BNH: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decentralized logits ``[B, N, A]`` and the GRU output ``h`` ``[B, N, H]`` (also the next hidden)."""
        return run_agents(self.decentralized, obs_BNO, prev_action_BN, hidden_BNH)

    def coord_logits(self, h_BNH: torch.Tensor, actions_BN: torch.Tensor) -> torch.Tensor:
        """``pi_T`` logits ``[B, N, A]`` of every agent given the joint action's preceding part (training)."""
        return self.coord_head(torch.cat([h_BNH, self.attention(h_BNH, actions_BN)], dim=-1))

    def coord_logits_agent(self, h_BH: torch.Tensor, preceding_actions_BM: torch.Tensor) -> torch.Tensor:
        """``pi_T`` logits ``[B, A]`` of agent ``M`` given the ``M`` actions already chosen (sequential inference)."""
        x_BI = torch.cat([h_BH, self.attention.forward_agent(h_BH, preceding_actions_BM)], dim=-1)
        return self.coord_head.forward_agent(x_BI, preceding_actions_BM.shape[1])


class TADCritic(_CriticInput):
    """TAD-PPO's critic on the transformed MDP: ``V(s, a_<i)`` for virtual step ``i`` from the critic input
    (global state, with ``obs_dim`` agent ``i``'s observation too; agent ``i``'s id) and attention over the
    preceding agents' actions."""

    def __init__(self, state_dim: int, n_agents: int, n_actions: int, n_heads: int, head_dim: int,
                 hidden_dim: int = 64, obs_dim: int = 0) -> None:
        super().__init__(state_dim, n_agents, obs_dim)
        self.base = nn.Sequential(
            nn.Linear(self.input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU()
        )
        self.attention = PrecedingActionAttention(hidden_dim, n_actions, n_agents, n_heads, head_dim, hidden_dim)
        self.head = nn.Sequential(
            nn.Linear(hidden_dim + self.attention.out_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1)
        )

    def forward(self, state_BS: torch.Tensor, actions_BN: torch.Tensor,
                obs_BNO: torch.Tensor | None = None) -> torch.Tensor:
        """``V(s, a_<i)`` for every virtual step ``i``: ``[B, N]``."""
        h_BNH = self.base(self.critic_input(state_BS, obs_BNO))
        return self.head(torch.cat([h_BNH, self.attention(h_BNH, actions_BN)], dim=-1)).squeeze(-1)

    def first_value(self, state_BS: torch.Tensor, obs_BNO: torch.Tensor | None = None) -> torch.Tensor:
        """``V(s, a_<0)`` (first virtual step of an env step, nothing chosen yet): ``[B]``."""
        h_BH = self.base(self.critic_input(state_BS, obs_BNO))[:, 0]
        empty = torch.zeros(state_BS.shape[0], 0, dtype=torch.long, device=state_BS.device)
        return self.head(torch.cat([h_BH, self.attention.forward_agent(h_BH, empty)], dim=-1)).squeeze(-1)


def masked_logits(logits_BA: torch.Tensor, avail_BA: torch.Tensor) -> torch.Tensor:
    """Unavailable actions get a logit of -1e10 (probability 0, finite gradients)."""
    return logits_BA.masked_fill(~avail_BA, -1e10)


def sample_actions(logits_BA: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One sample per row of a categorical given by (masked) logits, from a dedicated generator."""
    probs = F.softmax(logits_BA, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
