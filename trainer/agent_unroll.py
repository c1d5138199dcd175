"""The per-agent network as the trainer builds it from the config and unrolls it over whole episodes.

``agent_net_config`` turns the ``[agent]`` section and an env's dims into ``AgentNetConfig`` (for the
value methods' Q-agents and MAPPO/TAD-PPO's actors alike). ``unroll`` runs a parameter-shared
``AgentNet`` over ``B`` padded episodes of up to ``T+1`` steps from a zero hidden state and returns the
scores and the hidden features ``h_i`` (QTRAN's joint networks read them). It computes the real steps
only, packed: the layers that do not read the hidden state in one call over all of them, the GRU cell
once per step over the episodes still going (longest first). Padding costs nothing, which matters on
SMAX where a batch pads to its longest episode (often twice the mean).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
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


def unroll(net: AgentNet, obs_BTNO: torch.Tensor, prev_BTN: torch.Tensor,
           steps_B: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[B, T, N, A]`` and hidden features ``[B, T, N, H]`` of ``net`` over every step of every episode.

    ``steps_B`` (int, optional): how many leading steps of each episode exist (an episode of ``L``
    transitions has ``L + 1`` views). Only those are computed; the scores and features after them are
    zero. Steps that do not depend on the hidden state (the input layers, the head) run in one call
    over all real rows; the recurrent cell runs once per step over the episodes still going.
    """
    B, T, N, _ = obs_BTNO.shape
    device = obs_BTNO.device
    packed = steps_B is not None and bool((steps_B < T).any())
    if packed:
        # Episodes longest first, time-major: at step t the rows still going are a prefix, and the real
        # rows of the whole batch, read in (t, episode, agent) order, are exactly the packed sequence.
        order_B = torch.argsort(steps_B.clamp(max=T), descending=True, stable=True)
        live_TB = torch.arange(T, device=device).unsqueeze(1) < steps_B[order_B].unsqueeze(0)  # [T, B]
        live_TBN = live_TB.unsqueeze(-1).expand(T, B, N)
        obs_PO = obs_BTNO[order_B].transpose(0, 1)[live_TBN]  # [P, O], P = N * sum(steps)
        prev_P = prev_BTN[order_B].transpose(0, 1)[live_TBN]
        ids_P = torch.arange(N, device=device).expand(T, B, N)[live_TBN]
        rows_T = (live_TB.sum(1) * N).tolist()  # rows still going at each step (non-increasing)
    else:  # every episode runs all T steps: no reordering
        obs_PO = obs_BTNO.transpose(0, 1).reshape(T * B * N, -1)
        prev_P = prev_BTN.transpose(0, 1).reshape(-1)
        ids_P = torch.arange(N, device=device).repeat(T * B)
        rows_T = [B * N] * T
    x_PH = net.features_in(obs_PO, prev_P, ids_P)
    if net.config.recurrent:
        rnn = net.rnn
        hidden_RH = net.initial_hidden(rows_T[0], device)
        hs, start = [], 0
        for rows in rows_T:  # the batch pads to its longest episode: every step has rows
            hidden_RH = torch.gru_cell(x_PH[start:start + rows], hidden_RH[:rows], rnn.weight_ih, rnn.weight_hh,
                                       rnn.bias_ih, rnn.bias_hh)
            hs.append(hidden_RH)
            start += rows
        h_PH = torch.cat(hs)
    else:
        h_PH = F.relu(net.rnn(x_PH))
    q_PA = net.head(h_PH)
    if not packed:
        return q_PA.view(T, B, N, -1).transpose(0, 1), h_PH.view(T, B, N, -1).transpose(0, 1)
    q_TBNA = q_PA.new_zeros(T, B, N, q_PA.shape[-1])
    h_TBNH = h_PH.new_zeros(T, B, N, h_PH.shape[-1])
    q_TBNA[live_TBN], h_TBNH[live_TBN] = q_PA, h_PH
    inverse_B = torch.argsort(order_B)
    return q_TBNA.transpose(0, 1)[inverse_B], h_TBNH.transpose(0, 1)[inverse_B]
