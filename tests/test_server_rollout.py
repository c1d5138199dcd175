"""Live model rollout over real sockets: 64 live episodes across a rollout, a corrupt version refused, a rollback.

Two real `marlctl serve` processes serve a model dir that is a symlink (the ConfigMap/volume pattern: the
directory is swapped atomically); `marlctl rollout` signals them."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from marlctl.proto import agent_pb2, agent_pb2_grpc
from marlctl.serving.model import load_agent_model
from serving_helpers import export_model, free_port
from serving_procs import MARLCTL, is_serving, start_agent, wait_until

OBS_DIM, N_ACTIONS, T, SPLIT = 10, 2, 6, 3


def swap(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (a new symlink renamed over the old one)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs_TO = rng.random((T, OBS_DIM)).astype(np.float32)
    avail_TA = rng.random((T, N_ACTIONS)) < 0.7
    avail_TA[~avail_TA.any(1), 0] = True
    return obs_TO, avail_TA


def reference_actions(model, obs_TO: np.ndarray, avail_TA: np.ndarray) -> list[int]:
    hidden, prev, out = model.initial_hidden(1), np.array([-1], np.int64), []
    for o, a in zip(obs_TO, avail_TA, strict=True):
        act, _, hidden = model.infer(o[None], prev, a[None], hidden)
        out.append(int(act[0]))
        prev = act
    return out


def obs_msg(o: np.ndarray, a: np.ndarray) -> agent_pb2.Observation:
    return agent_pb2.Observation(obs=o.tolist(), avail_actions=a.tolist())


def model_info(metrics_port: int) -> list[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return [line for line in text.splitlines() if line.startswith("marl_agent_model_info{")]


def rollout_cli(link: Path, agents: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MARLCTL, "rollout", str(link), "--agents", agents, "--timeout", "60", *extra],
                          capture_output=True, text=True, timeout=120)


class Episodes:
    """32 per-episode streams and 32 unary episodes of agent 1, stepped together."""

    def __init__(self, stub, tag: str, n: int, seed0: int) -> None:
        self.stub, self.tag = stub, tag
        self.data = [inputs(seed0 + k) for k in range(2 * n)]
        self.streams = [stub.Episode() for _ in range(n)]
        self.n = n
        self.actions: list[list[int]] = [[] for _ in range(2 * n)]

    def unary_id(self, k: int) -> str:
        return f"{self.tag}-{k}"

    async def step(self, t: int) -> None:
        async def one_stream(k: int) -> None:
            o, a = self.data[k]
            await self.streams[k].write(obs_msg(o[t], a[t]))
            self.actions[k].append((await self.streams[k].read()).action)

        async def one_unary(k: int) -> None:
            o, a = self.data[self.n + k]
            d = await self.stub.Decide(agent_pb2.DecideRequest(episode_id=self.unary_id(k), start=t == 0,
                                                               end=t == T - 1, observation=obs_msg(o[t], a[t])))
            self.actions[self.n + k].append(d.action)

        await asyncio.gather(*(one_stream(k) for k in range(self.n)), *(one_unary(k) for k in range(self.n)))

    async def end(self) -> None:
        for call in self.streams:
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("versions")
    v1, v2 = export_model(root / "v1", seed=0), export_model(root / "v2", seed=1)
    v3 = Path(shutil.copytree(v2, root / "v3-corrupt"))
    blob = bytearray((v3 / "agent_1.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, other bytes: the manifest's sha256 no longer matches
    (v3 / "agent_1.onnx").write_bytes(bytes(blob))
    return v1, v2, v3


def test_rollout_keeps_live_episodes_on_their_version_refuses_a_corrupt_one_and_rolls_back(versions, tmp_path):
    v1, v2, v3 = versions
    link = tmp_path / "current"
    link.symlink_to(v1)
    metrics_port = free_port()
    procs = [start_agent(link, 0, tmp_path, wait=False), start_agent(link, 1, tmp_path, metrics_port=metrics_port)]
    addresses = ",".join(p.address for p in procs)
    models = {v: load_agent_model(v, 1) for v in (v1, v2)}
    try:
        wait_until(lambda: is_serving(procs[0].address), 90, "agent 0 SERVING")

        async def scenario() -> dict:
            async with grpc.aio.insecure_channel(procs[1].address) as ch:
                stub = agent_pb2_grpc.AgentServiceStub(ch)
                v1_version = (await stub.GetSpec(agent_pb2.GetSpecRequest())).model_version
                old = Episodes(stub, "old", 32, seed0=0)
                for t in range(SPLIT):
                    await old.step(t)
                swap(link, v2)
                done = await asyncio.to_thread(rollout_cli, link, addresses)
                assert done.returncode == 0, done.stdout + done.stderr
                v2_version = (await stub.GetSpec(agent_pb2.GetSpecRequest())).model_version
                assert v2_version != v1_version
                spec_old = await stub.GetSpec(agent_pb2.GetSpecRequest(episode_id=old.unary_id(0)))
                info_both = model_info(metrics_port)
                new = Episodes(stub, "new", 4, seed0=100)
                for t in range(SPLIT, T):
                    await old.step(t)
                for t in range(T):
                    await new.step(t)
                    if t == 0:
                        spec_new = await stub.GetSpec(agent_pb2.GetSpecRequest(episode_id=new.unary_id(0)))
                await old.end()
                await new.end()
                return {"old": old, "new": new, "v1": v1_version, "v2": v2_version, "spec_old": spec_old,
                        "spec_new": spec_new, "info_both": info_both}

        r = asyncio.run(scenario())
        # 0 failed decisions (any failure raised above); each episode all on the version it started on
        for k, (o, a) in enumerate(r["old"].data):
            assert r["old"].actions[k] == reference_actions(models[v1], o, a), f"old episode {k}"
        for k, (o, a) in enumerate(r["new"].data):
            assert r["new"].actions[k] == reference_actions(models[v2], o, a), f"new episode {k}"
        differ = sum(reference_actions(models[v1], o, a) != reference_actions(models[v2], o, a)
                     for o, a in r["old"].data)
        assert differ > 0, "the two versions decide alike on these inputs: the test could not tell them apart"
        assert (r["spec_old"].model_version, r["spec_new"].model_version) == (r["v1"], r["v2"])
        assert len(r["info_both"]) == 2 and all(any(f'version="{v}"' in line for line in r["info_both"])
                                                for v in (r["v1"], r["v2"]))  # both while both are live
        wait_until(lambda: len(model_info(metrics_port)) == 1, 10, "the old version's model_info to go")
        assert f'version="{r["v2"]}"' in model_info(metrics_port)[0]

        # a corrupt version: the CLI refuses it before signalling; a signal anyway is refused by the server
        swap(link, v3)
        refused = rollout_cli(link, addresses)
        assert refused.returncode == 2 and "does not match" in refused.stderr
        with grpc.insecure_channel(procs[1].address) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            before = stub.GetSpec(agent_pb2.GetSpecRequest()).rollout_attempts
            os.kill(procs[1].proc.pid, signal.SIGHUP)
            spec = wait_until(lambda: (s := stub.GetSpec(agent_pb2.GetSpecRequest())).rollout_attempts > before and s,
                              30, "the server to answer SIGHUP")
            assert spec.model_version == r["v2"] and "does not match" in spec.rollout_refusal
            o, a = inputs(7)
            d = stub.Decide(agent_pb2.DecideRequest(episode_id="after-refusal", start=True, end=True,
                                                    observation=obs_msg(o[0], a[0])))
            assert d.action == reference_actions(models[v2], o[:1], a[:1])[0]
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'marl_agent_rollouts_total{agent="1",result="refused"} 1.0' in text
        assert "refused, version" in procs[1].log.read_text()

        # rollback: back to v1, kept in memory (the dir still holds the corrupt v3)
        back = rollout_cli(link, addresses, "--rollback")
        assert back.returncode == 0, back.stdout + back.stderr
        with grpc.insecure_channel(procs[1].address) as ch:
            assert agent_pb2_grpc.AgentServiceStub(ch).GetSpec(agent_pb2.GetSpecRequest()).model_version == r["v1"]
    finally:
        for p in procs:
            p.stop()



def test_watch_rolls_out_when_the_model_dir_is_swapped(versions, tmp_path):
    from marlctl.serving.server import ServerConfig
    from serving_helpers import ServerThread

    v1, v2, v3 = versions
    link = tmp_path / "current"
    link.symlink_to(v1)
    st = ServerThread(ServerConfig(model_dir=link, agent_index=1, host="127.0.0.1", port=0, watch_s=0.05))
    try:
        stub = agent_pb2_grpc.AgentServiceStub(st.channel())

        def spec(eid: str = "") -> agent_pb2.AgentSpec:
            return stub.GetSpec(agent_pb2.GetSpecRequest(episode_id=eid))

        first = spec()
        o, a = inputs(3)
        stub.Decide(agent_pb2.DecideRequest(episode_id="live", start=True, observation=obs_msg(o[0], a[0])))
        swap(link, v2)  # the ConfigMap/volume pattern: the directory is replaced atomically
        second = wait_until(lambda: (s := spec()).model_version != first.model_version and s, 30,
                            "--watch to roll out the swapped model dir")
        assert second.rollout_refusal == "" and spec("live").model_version == first.model_version
        swap(link, v3)
        refused = wait_until(lambda: (s := spec()).rollout_attempts > second.rollout_attempts and s, 30,
                             "--watch to try the corrupt version")
        assert refused.model_version == second.model_version and "does not match" in refused.rollout_refusal
        d = stub.Decide(agent_pb2.DecideRequest(episode_id="live", end=True, observation=obs_msg(o[1], a[1])))
        assert d.step == 1
    finally:
        st.close()
