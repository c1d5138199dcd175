"""Agent service tests over real sockets with a real gRPC client and real ONNX Runtime."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from marlctl.proto import agent_pb2, agent_pb2_grpc
from marlctl.serving.server import SERVICE_NAME, ServerConfig
from serving_helpers import ServerThread, export_model, free_port, reference, wait_for

OBS_DIM, N_ACTIONS = 10, 2
BATCH_SIZES: list[int] = []  # server-reported batch size of every decision the helpers below received


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tmp_path_factory.mktemp("model"))


def make_server(model_dir: Path, load: bool = True, **kw: object) -> ServerThread:
    kw.setdefault("metrics_port", 0)
    return ServerThread(ServerConfig(model_dir=model_dir, agent_index=1, host="127.0.0.1", port=0, **kw), load=load)


@pytest.fixture(scope="module")
def server(model_dir: Path):
    st = make_server(model_dir)
    yield st
    st.close()


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(server.channel())


def episode_inputs(seed: int, T: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs_TO = rng.standard_normal((T, OBS_DIM)).astype(np.float32)
    avail_TA = rng.random((T, N_ACTIONS)) < 0.6
    avail_TA[~avail_TA.any(axis=1), 0] = True
    return obs_TO, avail_TA



def obs_msg(obs_O: np.ndarray, avail_A: np.ndarray) -> agent_pb2.Observation:
    return agent_pb2.Observation(obs=obs_O.tolist(), avail_actions=avail_A.tolist())


def run_stream(stub, obs_TO: np.ndarray, avail_TA: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    decisions = list(stub.Episode(obs_msg(o, a) for o, a in zip(obs_TO, avail_TA, strict=True)))
    assert [d.step for d in decisions] == list(range(len(obs_TO)))
    BATCH_SIZES.extend(d.timing.batch_size for d in decisions)
    return np.array([d.action for d in decisions]), np.array([list(d.scores) for d in decisions], np.float32)


def run_unary(stub, eid: str, obs_TO: np.ndarray, avail_TA: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    actions, scores = [], []
    T = len(obs_TO)
    for t in range(T):
        d = stub.Decide(agent_pb2.DecideRequest(episode_id=eid, start=t == 0, end=t == T - 1,
                                                observation=obs_msg(obs_TO[t], avail_TA[t])))
        actions.append(d.action)
        scores.append(list(d.scores))
        BATCH_SIZES.append(d.timing.batch_size)
    return np.array(actions), np.array(scores, np.float32)


def code_of(fn, *args) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as exc:
        r = fn(*args)
        if not isinstance(r, agent_pb2.Decision | agent_pb2.AgentSpec):
            list(r)
    return exc.value.code()


def test_stream_and_unary_decisions_equal_in_process_onnx_runtime(model_dir, stub):
    obs_TO, avail_TA = episode_inputs(0)
    ref_a, ref_q = reference(model_dir, obs_TO, avail_TA)
    s_a, s_q = run_stream(stub, obs_TO, avail_TA)
    u_a, u_q = run_unary(stub, "unary-eq", obs_TO, avail_TA)
    np.testing.assert_array_equal(s_a, ref_a)
    np.testing.assert_array_equal(u_a, ref_a)
    np.testing.assert_allclose(s_q, ref_q, atol=1e-6)
    np.testing.assert_allclose(u_q, ref_q, atol=1e-6)
    assert all(avail_TA[t, a] for t, a in enumerate(s_a))  # never an unavailable action


def test_get_spec_reports_model(stub, model_dir):
    spec = stub.GetSpec(agent_pb2.GetSpecRequest())
    assert (spec.agent_index, spec.n_agents, spec.obs_dim, spec.n_actions) == (1, 2, OBS_DIM, N_ACTIONS)
    assert spec.env_id == "hallway" and spec.algorithm == "qtran-base" and spec.kind == "q"
    import json
    assert spec.model_sha256 == json.loads((model_dir / "manifest.json").read_text())["agents"][1]["sha256"]
    assert spec.execution_provider == "CPUExecutionProvider"


@pytest.mark.parametrize(
    "obs, avail, what",
    [
        ([0.0] * (OBS_DIM - 1), [True, True], "obs has 9 values"),
        ([0.0] * OBS_DIM, [True], "avail_actions has 1"),
        ([0.0] * (OBS_DIM - 1) + [float("nan")], [True, True], "NaN/Inf at index [9]"),
        ([float("inf")] + [0.0] * (OBS_DIM - 1), [True, True], "NaN/Inf at index [0]"),
        ([0.0] * OBS_DIM, [False, False], "all false"),
    ],
)
def test_invalid_argument_on_stream_and_unary(stub, obs, avail, what):
    bad = agent_pb2.Observation(obs=obs, avail_actions=avail)
    good = agent_pb2.Observation(obs=[0.0] * OBS_DIM, avail_actions=[True, True])
    with pytest.raises(grpc.RpcError) as exc:
        list(stub.Episode(iter([good, bad, good])))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and what in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        stub.Decide(agent_pb2.DecideRequest(episode_id="bad-1", start=True, observation=bad))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and what in exc.value.details()
    # the refused first step left nothing behind: the same id can start cleanly
    stub.Decide(agent_pb2.DecideRequest(episode_id="bad-1", start=True, end=True, observation=good))


def test_failed_precondition_unknown_finished_duplicate(stub):
    good = agent_pb2.Observation(obs=[0.0] * OBS_DIM, avail_actions=[True, True])
    with pytest.raises(grpc.RpcError) as exc:
        stub.Decide(agent_pb2.DecideRequest(episode_id="never-started", observation=good))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "unknown" in exc.value.details()
    stub.Decide(agent_pb2.DecideRequest(episode_id="fin", start=True, observation=good))
    with pytest.raises(grpc.RpcError) as exc:
        stub.Decide(agent_pb2.DecideRequest(episode_id="fin", start=True, observation=good))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "already live" in exc.value.details()
    stub.Decide(agent_pb2.DecideRequest(episode_id="fin", end=True, observation=good))
    with pytest.raises(grpc.RpcError) as exc:
        stub.Decide(agent_pb2.DecideRequest(episode_id="fin", observation=good))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "already ended" in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        stub.Decide(agent_pb2.DecideRequest(episode_id="bad id with spaces", start=True, observation=good))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_requests_do_not_harm_a_concurrent_episode(model_dir, stub):
    obs_TO, avail_TA = episode_inputs(3, T=10)
    ref_a, ref_q = reference(model_dir, obs_TO, avail_TA)
    nan = agent_pb2.Observation(obs=[float("nan")] * OBS_DIM, avail_actions=[True, True])
    decisions = []

    def interleaved():
        for t in range(len(obs_TO)):
            # between every step of the good episode, other clients send bad requests
            for bad in (lambda: list(stub.Episode(iter([nan]))),
                        lambda: stub.Decide(agent_pb2.DecideRequest(episode_id="x", observation=nan)),
                        lambda: stub.Decide(agent_pb2.DecideRequest(episode_id="y", start=True, observation=nan))):
                with pytest.raises(grpc.RpcError):
                    bad()
            yield obs_msg(obs_TO[t], avail_TA[t])

    for d in stub.Episode(interleaved()):
        decisions.append(d)
    np.testing.assert_array_equal([d.action for d in decisions], ref_a)
    np.testing.assert_allclose([list(d.scores) for d in decisions], ref_q, atol=1e-6)


@pytest.mark.parametrize("mode", ["loop", "thread"])
def test_micro_batched_concurrent_episodes_match_reference(model_dir, mode):
    # a long batch window makes the 8 lock-stepped episodes land in shared batches
    st = make_server(model_dir, batching=mode, batch_window_us=20_000)
    assert st.server.servicer.batcher.mode == mode
    BATCH_SIZES.clear()
    try:
        stub = agent_pb2_grpc.AgentServiceStub(st.channel())
        inputs = [episode_inputs(100 + k, T=8) for k in range(8)]
        refs = [reference(model_dir, o, a) for o, a in inputs]
        results: dict[int, tuple] = {}
        barrier = threading.Barrier(len(inputs))

        def worker(k: int) -> None:
            barrier.wait(10)
            results[k] = run_stream(stub, *inputs[k]) if k % 2 else run_unary(stub, f"ep-{k}", *inputs[k])

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(results) == list(range(len(inputs)))
        for k, (ref_a, ref_q) in enumerate(refs):
            np.testing.assert_array_equal(results[k][0], ref_a)
            np.testing.assert_allclose(results[k][1], ref_q, atol=1e-5)
        assert max(BATCH_SIZES) >= 2, "no decision was micro-batched"
        text = urllib.request.urlopen(f"http://127.0.0.1:{st.server.metrics_port}/metrics", timeout=10).read().decode()
        assert "marl_agent_inference_seconds_count" in text
    finally:
        st.close()


def test_resource_exhausted_and_idle_expiry(model_dir):
    st = make_server(model_dir, max_episodes=2, idle_timeout_s=0.3)
    try:
        stub = agent_pb2_grpc.AgentServiceStub(st.channel())
        good = agent_pb2.Observation(obs=[0.0] * OBS_DIM, avail_actions=[True, True])
        for eid in ("a", "b"):
            stub.Decide(agent_pb2.DecideRequest(episode_id=eid, start=True, observation=good))
        with pytest.raises(grpc.RpcError) as exc:
            stub.Decide(agent_pb2.DecideRequest(episode_id="c", start=True, observation=good))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.Episode(iter([good])))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # unary episodes expire when idle, which frees the bound
        wait_for(lambda: len(st.server.servicer.episodes) == 0, 10, "idle unary episodes to expire")
        with pytest.raises(grpc.RpcError) as exc:
            stub.Decide(agent_pb2.DecideRequest(episode_id="a", observation=good))
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "expired" in exc.value.details()
        assert len(list(stub.Episode(iter([good, good])))) == 2
    finally:
        st.close()


def test_health_not_serving_until_model_loaded_then_reflection(model_dir):
    st = make_server(model_dir, load=False)
    try:
        ch = st.channel()
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", SERVICE_NAME):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
                health_pb2.HealthCheckResponse.NOT_SERVING
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        with pytest.raises(grpc.RpcError) as exc:
            stub.GetSpec(agent_pb2.GetSpecRequest())
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        st.load()
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status == \
            health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    finally:
        st.close()


def test_oversized_message_rejected_server_keeps_serving(model_dir):
    st = make_server(model_dir, max_message_bytes=2048)
    try:
        stub = agent_pb2_grpc.AgentServiceStub(st.channel())
        huge = agent_pb2.Observation(obs=[0.5] * 4096, avail_actions=[True, True])
        with pytest.raises(grpc.RpcError) as exc:
            stub.Decide(agent_pb2.DecideRequest(episode_id="big", start=True, observation=huge))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        good = agent_pb2.Observation(obs=[0.0] * OBS_DIM, avail_actions=[True, True])
        assert stub.Decide(agent_pb2.DecideRequest(episode_id="ok", start=True, end=True, observation=good)).step == 0
    finally:
        st.close()


def test_metrics_endpoint_exposes_server_metric_names(server, stub):
    good = agent_pb2.Observation(obs=[0.0] * OBS_DIM, avail_actions=[True, True])
    list(stub.Episode(iter([good, good])))
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10).read().decode()
    for name in ("marl_agent_decisions_total", "marl_agent_decision_seconds_bucket", "marl_agent_inference_seconds_count",
                 "marl_agent_live_episodes", "marl_agent_model_info"):
        assert name in text, name
    assert 'code="OK"' in text and 'code="INVALID_ARGUMENT"' in text
    assert 'algo="qtran-base"' in text


def test_sigterm_drains_a_subprocess_server(model_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "marlctl.cli.app", "serve", str(model_dir), "--agent", "0", "--host", "127.0.0.1",
         "--port", str(port), "--grace", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(ch)

        def serving() -> bool:
            try:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                    health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                return False

        wait_for(serving, 60, "the server to report SERVING")
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        good = agent_pb2.Observation(obs=[0.0] * OBS_DIM, avail_actions=[True, True])
        stub.Decide(agent_pb2.DecideRequest(episode_id="live", start=True, observation=good))
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not serving(), 30, "health NOT_SERVING after SIGTERM")
        with pytest.raises(grpc.RpcError) as exc:
            stub.Decide(agent_pb2.DecideRequest(episode_id="new", start=True, observation=good))
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.Episode(iter([good])))
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        # the live episode goes on during the grace period, then ends; the server exits cleanly
        assert stub.Decide(agent_pb2.DecideRequest(episode_id="live", observation=good)).step == 1
        assert stub.Decide(agent_pb2.DecideRequest(episode_id="live", end=True, observation=good)).step == 2
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_streams_still_live_after_the_grace_period_end_with_unavailable(model_dir):
    import queue

    st = make_server(model_dir, grace_s=0.3)
    try:
        stub = agent_pb2_grpc.AgentServiceStub(st.channel())
        good = agent_pb2.Observation(obs=[0.0] * OBS_DIM, avail_actions=[True, True])
        outbox: queue.Queue = queue.Queue()
        outbox.put(good)

        def requests():
            while (msg := outbox.get(timeout=30)) is not None:
                yield msg

        call = stub.Episode(requests())
        assert next(call).step == 0
        drain = asyncio.run_coroutine_threadsafe(st.server.drain_and_stop(), st.loop)
        with pytest.raises(grpc.RpcError) as exc:
            next(call)  # the client never ends its episode; the server ends it after the grace period
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE and "grace period" in exc.value.details()
        drain.result(30)
        outbox.put(None)
    finally:
        st.close()


def test_tls_serves_only_tls_clients(model_dir, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    st = make_server(model_dir, tls_cert=cert, tls_key=key)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{st.server.port}", creds) as ch:
            spec = agent_pb2_grpc.AgentServiceStub(ch).GetSpec(agent_pb2.GetSpecRequest(), timeout=10)
        assert spec.agent_index == 1
        with grpc.insecure_channel(st.target) as ch, pytest.raises(grpc.RpcError) as exc:
            agent_pb2_grpc.AgentServiceStub(ch).GetSpec(agent_pb2.GetSpecRequest(), timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        st.close()


def test_serving_path_does_not_import_torch(model_dir):
    code = ("import sys; import marlctl.cli.app; from marlctl.serving.server import AgentServer; "
            f"from marlctl.serving.model import load_agent_model; load_agent_model({str(model_dir)!r}, 0); "
            "heavy = [m for m in ('torch', 'jax', 'marlctl.trainer', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_request_id_is_echoed_in_trailing_metadata(stub):
    good = agent_pb2.Observation(obs=[0.0] * OBS_DIM, avail_actions=[True, True])
    _, call = stub.Decide.with_call(agent_pb2.DecideRequest(episode_id="rid", start=True, end=True, observation=good),
                                    metadata=(("x-request-id", "abc-123"),))
    assert ("x-request-id", "abc-123") in tuple(call.trailing_metadata())
    with pytest.raises(grpc.RpcError) as exc:  # errors carry it too, so a failure can be found in the server log
        stub.Decide(agent_pb2.DecideRequest(episode_id="nope", observation=good))
    assert any(k == "x-request-id" and len(v) == 16 for k, v in exc.value.trailing_metadata())
    stream = stub.Episode(iter([good]), metadata=(("x-request-id", "s-1"),))
    assert len(list(stream)) == 1 and ("x-request-id", "s-1") in tuple(stream.trailing_metadata())


def test_malformed_stream_bytes_are_invalid_argument(server, stub):
    raw = server.channel().stream_stream("/marlctl.agent.v1.AgentService/Episode")  # no serializers: raw bytes
    good = agent_pb2.Observation(obs=[0.0] * OBS_DIM, avail_actions=[True, True]).SerializeToString()
    with pytest.raises(grpc.RpcError) as exc:
        list(raw(iter([good, b"\x0a\xff\xff"])))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed Observation" in exc.value.details()
    # a valid but non-canonical encoding (unpacked repeated fields) is still served
    unpacked = b"".join(b"\x0d\x00\x00\x00\x00" for _ in range(OBS_DIM)) + b"\x10\x01\x10\x01"
    (decision,) = list(raw(iter([unpacked])))
    assert agent_pb2.Decision.FromString(decision).step == 0
