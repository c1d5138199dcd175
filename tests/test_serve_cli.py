"""The real `marlctl export`, `serve` and `serve-team` commands, run as subprocesses."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from marlctl.proto import agent_pb2, agent_pb2_grpc
from serving_helpers import free_port, wait_for, write_checkpoint

MARLCTL = [sys.executable, "-m", "marlctl.cli.app"]


def marlctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*MARLCTL, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = write_checkpoint(tmp_path_factory.mktemp("run"))
    out = tmp_path_factory.mktemp("cli") / "model"
    r = marlctl("export", str(run), "--out", str(out), "--verify-episodes", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "action agreement" in r.stdout and "100.00%" in r.stdout and "real environment" in r.stdout
    return out


def test_export_and_serve_refuse_bad_input_with_exit_2(model_dir, tmp_path):
    r = marlctl("export", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "error" in r.stderr
    r = marlctl("serve", str(tmp_path), "--agent", "0", "--port", "0")
    assert r.returncode == 2 and "manifest.json not found" in r.stderr
    r = marlctl("serve", str(model_dir), "--agent", "5", "--port", "0")
    assert r.returncode == 2 and "agents 0..1" in r.stderr
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for f in model_dir.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    data = bytearray((tampered / "agent_0.onnx").read_bytes())
    data[100] ^= 1
    (tampered / "agent_0.onnx").write_bytes(bytes(data))
    r = marlctl("serve", str(tampered), "--agent", "0", "--port", "0")
    assert r.returncode == 2 and "does not match the manifest" in r.stderr
    r = marlctl("serve", str(model_dir), "--agent", "0", "--port", "0", "--max-batch", "0")
    assert r.returncode == 2 and "max_batch must be >= 1" in r.stderr
    r = marlctl("serve", str(model_dir), "--agent", "0", "--port", "0", "--batching", "sometimes")
    assert r.returncode == 2 and "auto, loop, thread, off" in r.stderr
    r = marlctl("serve", str(model_dir), "--agent", "0", "--port", "0", "--obs-guard", "sometimes")
    assert r.returncode == 2 and "off, clip, refuse" in r.stderr
    r = marlctl("rollout", str(model_dir), "--agents", "127.0.0.1:1")
    assert r.returncode == 2 and "holds 2 agents but --agents lists 1" in r.stderr
    r = marlctl("rollout", str(tampered), "--agents", "127.0.0.1:1,127.0.0.1:2")
    assert r.returncode == 2 and "does not match the manifest" in r.stderr
    r = marlctl("rollout", str(model_dir), "--agents", "127.0.0.1:1,127.0.0.1:2")
    assert r.returncode == 2 and "does not answer GetSpec" in r.stderr


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as ch:
        try:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


def test_serve_team_starts_one_process_per_agent_and_stops_them(model_dir):
    base, mbase = free_port(), free_port()
    proc = subprocess.Popen([*MARLCTL, "serve-team", str(model_dir), "--base-port", str(base),
                             "--metrics-base-port", str(mbase), "--grace", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for i in range(2):
            wait_for(lambda i=i: _serving(f"127.0.0.1:{base + i}"), 90, f"agent {i} SERVING")
        for i in range(2):
            with grpc.insecure_channel(f"127.0.0.1:{base + i}") as ch:
                spec = agent_pb2_grpc.AgentServiceStub(ch).GetSpec(agent_pb2.GetSpecRequest(), timeout=5)
            assert spec.agent_index == i and spec.env_id == "hallway"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "all agents SERVING" in out
        for i in range(2):
            assert not _serving(f"127.0.0.1:{base + i}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
