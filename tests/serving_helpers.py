"""Shared helpers of the serving tests: a small exported team, free ports, an in-process server thread."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

ENV_ID = "hallway"  # real env: 2 agents, obs 10, 2 actions; episodes are short and pure NumPy


@dataclass
class BundleStandIn:
    """The fields of ``agents.bundle.AgentBundle`` that export needs, around a freshly built net."""

    net: Any
    kind: str
    algo: str
    env_id: str
    env_steps: int
    checkpoint_path: str
    checkpoint_sha256: str


def make_bundle(seed: int = 0, env_id: str = ENV_ID, hidden_dim: int = 32) -> BundleStandIn:
    import torch
    from marlctl.agents.recurrent import AgentNet, AgentNetConfig
    from marlctl.envs import env_spec

    spec = env_spec(env_id)
    torch.manual_seed(seed)
    net = AgentNet(AgentNetConfig(obs_dim=spec.obs_dim, n_actions=spec.n_actions, n_agents=spec.n_agents,
                                  hidden_dim=hidden_dim))
    with torch.no_grad():  # non-trivial normalisation, so baking it into the graph is exercised
        net.obs_mean.uniform_(-0.5, 0.5)
        net.obs_std.uniform_(0.5, 2.0)
    return BundleStandIn(net.eval(), "q", "qtran-base", env_id, 1234, "/runs/x/checkpoints/latest.pt", "ab" * 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``cond()`` until truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ServerThread:
    """An ``AgentServer`` on its own event loop in a background thread (real socket on a free port)."""

    def __init__(self, config: Any, load: bool = True) -> None:
        from marlctl.serving.server import AgentServer

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = AgentServer(config)
        self.call(self.server.start())
        if load:
            self.load()

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def load(self) -> None:
        self.call(self.server.load_model())

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def channel(self, **options: Any) -> grpc.Channel:
        return grpc.insecure_channel(self.target, options=list(options.items()))

    def close(self) -> None:
        try:
            self.call(self.server.stop(grace=0.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def export_model(out: Path, seed: int = 0, env_id: str = ENV_ID) -> Path:
    from marlctl.agents.export import ExportConfig, export_team

    export_team(make_bundle(seed, env_id), out, config=ExportConfig(verify_episodes=2, verify_max_steps=30))
    return out


def write_checkpoint(run_dir: Path, seed: int = 0, env_id: str = ENV_ID) -> Path:
    """A run dir holding ``checkpoints/latest.pt`` in the checkpoint format of the contracts."""
    import torch
    from marlctl.envs import env_spec

    b = make_bundle(seed, env_id)
    ckpt = {
        "format": "marlctl.checkpoint", "version": 1, "algo": b.algo, "env_id": env_id,
        "env_spec": env_spec(env_id).to_dict(), "env_steps": b.env_steps, "seed": seed,
        "agent": {"kind": b.kind, "config": b.net.config.to_dict(), "state_dict": b.net.state_dict()},
        "algorithm": {}, "run": {}, "config": {"algo": b.algo, "env_id": env_id, "seed": seed},
    }
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, run_dir / "checkpoints" / "latest.pt")
    return run_dir


def reference(model_dir: Path, obs_TO: Any, avail_TA: Any, agent: int = 1) -> tuple[Any, Any]:
    """One episode of agent ``agent`` in process: ONNX Runtime, batch 1, hidden state and previous action carried;
    ``(actions [T], scores [T, A])``."""
    import numpy as np
    from marlctl.serving.model import load_agent_model

    model = load_agent_model(model_dir, agent)
    hidden, prev = model.initial_hidden(1), np.array([-1], np.int64)
    actions, scores = [], []
    for obs_O, avail_A in zip(obs_TO, avail_TA, strict=True):
        a, q, hidden = model.infer(obs_O[None], prev, avail_A[None], hidden)
        actions.append(int(a[0]))
        scores.append(q[0])
        prev = a
    return np.array(actions), np.stack(scores)
