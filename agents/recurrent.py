"""The per-agent network: what one agent runs, ``(obs, prev_action, hidden) -> (scores, hidden')``.

One module serves every algorithm's decentralized part: the recurrent Q-agent of
QTRAN / ReMIX / VDN / QMIX (scores = Q-values) and the decentralized actors of MAPPO and
TAD-PPO (scores = logits). Input = own observation, one-hot previous own action, one-hot
agent id (parameter sharing across agents); MLP -> GRU cell -> head, or, feed-forward, an MLP of
``hidden_layers`` ReLU layers -> head whose last hidden layer is ``hidden_out`` (the input hidden is
ignored; the ONNX contract keeps its ``hidden`` input and output). The head is linear, or with
``head_layers = 2`` one ReLU layer and a linear one. The
hidden state is passed in and out explicitly, never stored on the module, so the same module is
what training batches over ``B*N`` rows, what ONNX export traces and what a service runs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

HEAD_LAYERS = (1, 2)
"""Valid head sizes: a linear head, or one ReLU layer of width ``hidden_dim`` and a linear one."""


@dataclass(frozen=True)
class AgentNetConfig:
    """Shape of the per-agent network (saved in checkpoints and ONNX metadata)."""

    obs_dim: int
    """Length of one agent's observation vector."""
    n_actions: int
    """Number of discrete actions (length of the score vector)."""
    n_agents: int
    """Number of agents sharing the parameters (size of the agent-id one-hot)."""
    hidden_dim: int = 64
    """Width of the MLP and of the GRU state H."""
    recurrent: bool = True
    """GRU cell when True; a feed-forward layer (the input hidden is ignored) when False."""
    hidden_layers: int = 2
    """Hidden layers of width ``hidden_dim``, counting the GRU cell or the feed-forward layer in its place
    (>= 2; the QTRAN paper's predator-prey agents: 3, feed-forward)."""
    prev_action_input: bool = True
    """Feed the one-hot previous own action (zeros at the first step)."""
    agent_id_input: bool = True
    """Feed the one-hot agent id (parameter sharing with specialisation)."""
    head_layers: int = 1
    """Layers of the head after the GRU / feed-forward layer: 1 = linear; 2 = a ReLU layer of width
    ``hidden_dim``, then linear (e.g. a distilled actor that must match a teacher's MLP head)."""

    def __post_init__(self) -> None:
        if self.hidden_layers < 2:
            raise ValueError(f"hidden_layers must be >= 2 (the input layer and the GRU / feed-forward layer), "
                             f"got {self.hidden_layers}")
        if self.head_layers not in HEAD_LAYERS:
            raise ValueError(f"head_layers must be 1 (linear) or 2 (ReLU layer + linear), got {self.head_layers}")

    def to_dict(self) -> dict:
        return asdict(self)


class AgentNet(nn.Module):
    """MLP -> GRU -> scores per action, for one agent row at a time (batched over rows)."""

    def __init__(self, config: AgentNetConfig) -> None:
        super().__init__()
        self.config = config
        in_dim = config.obs_dim
        in_dim += config.n_actions if config.prev_action_input else 0
        in_dim += config.n_agents if config.agent_id_input else 0
        self.fc_in = nn.Linear(in_dim, config.hidden_dim)
        # Extra ReLU layers between fc_in and the GRU / feed-forward layer (none by default, so the
        # parameter names of two-layer checkpoints are unchanged).
        self.mlp = nn.ModuleList(
            nn.Linear(config.hidden_dim, config.hidden_dim) for _ in range(config.hidden_layers - 2)
        )
        if config.recurrent:
            self.rnn: nn.Module = nn.GRUCell(config.hidden_dim, config.hidden_dim)
        else:
            self.rnn = nn.Linear(config.hidden_dim, config.hidden_dim)
        out = nn.Linear(config.hidden_dim, config.n_actions)
        # One linear layer keeps the parameter names of checkpoints written before ``head_layers`` existed.
        self.head: nn.Module = out if config.head_layers == 1 else nn.Sequential(
            nn.Linear(config.hidden_dim, config.hidden_dim), nn.ReLU(), out)
        # Observation normalisation baked into the network (identity unless set by a trainer).
        self.register_buffer("obs_mean", torch.zeros(config.obs_dim))
        self.register_buffer("obs_std", torch.ones(config.obs_dim))

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_dim

    @property
    def head_out(self) -> nn.Linear:
        """The head's last (output) layer: the one a policy's small-gain initialisation applies to."""
        return self.head if isinstance(self.head, nn.Linear) else self.head[-1]

    def initial_hidden(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.zeros(batch, self.config.hidden_dim, device=device)

    def features_in(self, obs_BO: torch.Tensor, prev_action_B: torch.Tensor, agent_id_B: torch.Tensor) -> torch.Tensor:
        """The layers before the GRU / feed-forward layer ``[B, H]``: they do not read the hidden state, so a
        trainer can run them over every step of an episode at once."""
        cfg = self.config
        x = [(obs_BO - self.obs_mean) / self.obs_std]
        if cfg.prev_action_input:
            # one_hot(-1) is not defined: shift by one and drop the "none" column.
            x.append(F.one_hot(prev_action_B + 1, cfg.n_actions + 1)[:, 1:].to(obs_BO.dtype))
        if cfg.agent_id_input:
            x.append(F.one_hot(agent_id_B, cfg.n_agents).to(obs_BO.dtype))
        h = F.relu(self.fc_in(torch.cat(x, dim=-1)))
        for layer in self.mlp:
            h = F.relu(layer(h))
        return h

    def forward(
        self,
        obs_BO: torch.Tensor,
        prev_action_B: torch.Tensor,
        agent_id_B: torch.Tensor,
        hidden_BH: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, A]`` and the next hidden state ``[B, H]``.

        ``prev_action_B`` is int64 with -1 meaning "no previous action" (first step);
        ``agent_id_B`` is int64 in ``[0, n_agents)``.
        """
        h = self.features_in(obs_BO, prev_action_B, agent_id_B)
        if self.config.recurrent:
            hidden_out_BH = self.rnn(h, hidden_BH)
        else:
            hidden_out_BH = F.relu(self.rnn(h))
        return self.head(hidden_out_BH), hidden_out_BH


def masked_greedy(scores_BA: torch.Tensor, avail_BA: torch.Tensor) -> torch.Tensor:
    """Greedy action among available ones (never an unavailable action)."""
    return scores_BA.masked_fill(~avail_BA, float("-inf")).argmax(dim=-1)


class GreedyAgentPolicy(nn.Module):
    """One agent's deployable policy: the shared network with its agent id baked in.

    Signature of the ONNX agent model contract (DESIGN.md):
    ``(obs [B,O] f32, prev_action [B] i64, avail_actions [B,A] bool, hidden [B,H] f32)
    -> (action [B] i64, scores [B,A] f32, hidden_out [B,H] f32)``.
    """

    def __init__(self, net: AgentNet, agent_index: int) -> None:
        super().__init__()
        if not 0 <= agent_index < net.config.n_agents:
            raise ValueError(f"agent index {agent_index} outside [0, {net.config.n_agents})")
        self.net = net
        self.agent_index = agent_index

    def forward(
        self,
        obs: torch.Tensor,
        prev_action: torch.Tensor,
        avail_actions: torch.Tensor,
        hidden: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        agent_id = torch.full_like(prev_action, self.agent_index)
        scores, hidden_out = self.net(obs, prev_action, agent_id, hidden)
        return masked_greedy(scores, avail_actions), scores, hidden_out
