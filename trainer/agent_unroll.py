"""The per-agent network as the trainer builds it from the config and unrolls it over whole episodes.

``agent_net_config`` turns the ``[agent]`` section and an env's dims into ``AgentNetConfig`` (for the
value methods' Q-agents and MAPPO/TAD-PPO's actors alike). ``unroll`` runs a parameter-shared
``AgentNet`` over ``B`` episodes of ``T+1`` steps from a zero hidden state, ``B*N`` rows a step, and
returns the scores and the hidden features ``h_i`` (QTRAN's joint networks read them); a feed-forward
agent carries no state, so all steps go through in one call.
"""
from __future__ import annotations

import torch
from marlctl.agents.recurrent import AgentNet, AgentNetConfig
from marlctl.envs.base import EnvSpec
from marlctl.trainer.config import AgentConfig


def agent_net_config(agent: AgentConfig, spec: EnvSpec) -> AgentNetConfig:
    """The ``AgentNetConfig`` of ``spec``'s agents with the configured architecture."""
    return AgentNetConfig(
        obs_dim=spec.obs_dim, n_actions=spec.n_actions, n_agents=spec.n_agents, hidden_dim=agent.hidden_dim,
        recurrent=agent.recurrent, hidden_layers=agent.hidden_layers, prev_action_input=agent.prev_action_input,
        agent_id_input=agent.agent_id_input,
    )


def unroll(net: AgentNet, obs_BTNO: torch.Tensor, prev_BTN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[B, T, N, A]`` and hidden features ``[B, T, N, H]`` of ``net`` over every step of every episode."""
    B, T, N, _ = obs_BTNO.shape
    device = obs_BTNO.device
    if not net.config.recurrent:  # no state to carry: every step in one call
        R = B * T * N
        ids_R = torch.arange(N, device=device).repeat(B * T)
        q_RA, h_RH = net(obs_BTNO.reshape(R, -1), prev_BTN.reshape(-1), ids_R, net.initial_hidden(R, device))
        return q_RA.view(B, T, N, -1), h_RH.view(B, T, N, -1)
    ids_R = torch.arange(N, device=device).repeat(B)  # [B*N]
    hidden_RH = net.initial_hidden(B * N, device)
    qs, hs = [], []
    for t in range(T):
        q_RA, hidden_RH = net(obs_BTNO[:, t].reshape(B * N, -1), prev_BTN[:, t].reshape(-1), ids_R, hidden_RH)
        qs.append(q_RA.view(B, N, -1))
        hs.append(hidden_RH.view(B, N, -1))
    return torch.stack(qs, dim=1), torch.stack(hs, dim=1)
