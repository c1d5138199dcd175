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
        agent_id_input=agent.agent_id_input, head_layers=agent.head_layers,
    )


def unroll(net: AgentNet, obs_BTNO: torch.Tensor, prev_BTN: torch.Tensor,
           steps_B: torch.Tensor | None = None, features: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores ``[B, T, N, A]`` and hidden features ``[B, T, N, H]`` of ``net`` over every step of every episode.

    ``steps_B`` (int, optional): how many leading steps of each episode exist (an episode of ``L``
    transitions has ``L + 1`` views). Only those are computed; the scores and features after them are
    zero. Steps that do not depend on the hidden state (the input layers, the head) run in one call
    over all real rows; the recurrent cell runs once per step over the episodes still going.
    ``features=False`` skips laying out the features (``None`` in their place) for callers that read
    the scores only.
    """
    B, T, N, _ = obs_BTNO.shape
    device = obs_BTNO.device
    packed = steps_B is not None and bool((steps_B < T).any())
    if packed:
        # Episodes longest first, time-major: at step t the rows still going are a prefix. ``rows_P`` are
        # the positions, in the flat (episode, step, agent) layout, of the real rows read in (t, episode
        # by length, agent) order: one gather packs them and one scatter unpacks the outputs.
        order_B = torch.argsort(steps_B.clamp(max=T), descending=True, stable=True)
        live_TB = torch.arange(T, device=device).unsqueeze(1) < steps_B[order_B].unsqueeze(0)  # [T, B]
        t_P, b_P = live_TB.nonzero(as_tuple=True)  # row-major: by t, then by the sorted episode
        rows_TB = ((order_B[b_P] * T + t_P) * N).unsqueeze(1)  # [P/N, 1] first agent's flat row
        rows_P = (rows_TB + torch.arange(N, device=device)).reshape(-1)  # [P]
        obs_PO = obs_BTNO.reshape(B * T * N, -1).index_select(0, rows_P)
        prev_P = prev_BTN.reshape(-1).index_select(0, rows_P)
        ids_P = rows_P % N
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
        hs = []
        # One split, not a slice per step: a slice's backward writes its gradient into a zero tensor the
        # size of all rows, once per step (T full-size fills and adds); the split's backward is one cat.
        for x_RH in torch.split(x_PH, rows_T):  # the batch pads to its longest episode: every step has rows
            rows = x_RH.shape[0]
            if rows < hidden_RH.shape[0]:  # episodes ended: the rows still going are a prefix
                hidden_RH = hidden_RH[:rows]
            hidden_RH = torch.gru_cell(x_RH, hidden_RH, rnn.weight_ih, rnn.weight_hh, rnn.bias_ih, rnn.bias_hh)
            hs.append(hidden_RH)
        h_PH = torch.cat(hs)
    else:
        h_PH = F.relu(net.rnn(x_PH))
    q_PA = net.head(h_PH)
    if not packed:
        q = q_PA.view(T, B, N, -1).transpose(0, 1)
        return q, (h_PH.view(T, B, N, -1).transpose(0, 1) if features else None)

    def unpack(x_PD: torch.Tensor) -> torch.Tensor:
        return x_PD.new_zeros(B * T * N, x_PD.shape[-1]).index_copy(0, rows_P, x_PD).view(B, T, N, -1)

    return unpack(q_PA), (unpack(h_PH) if features else None)
