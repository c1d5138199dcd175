"""What a hostile client finds, closed, over real sockets: undecodable bytes, extreme observations, forged log
lines, oversized messages on every RPC (issue 12, fixes 1-6)."""
from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from marlctl.proto import agent_pb2, agent_pb2_grpc
from marlctl.serving import wire
from marlctl.serving.server import SERVICE_NAME, ServerConfig
from serving_helpers import ServerThread, export_model, reference, wait_for

OBS_DIM, N_ACTIONS = 10, 2
DECIDE = f"/{SERVICE_NAME}/Decide"
GET_SPEC = f"/{SERVICE_NAME}/GetSpec"
EXTREME = np.full(OBS_DIM, -3.4e38, np.float32)  # finite, but the model's scores come back NaN
MIXED = np.array([3.4e38, -3.4e38] * (OBS_DIM // 2), np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tmp_path_factory.mktemp("model"))


def make_server(model_dir: Path, **kw: object) -> ServerThread:
    kw.setdefault("metrics_port", 0)
    return ServerThread(ServerConfig(model_dir=model_dir, agent_index=1, host="127.0.0.1", port=0, **kw))


@pytest.fixture(scope="module")
def server(model_dir: Path):
    st = make_server(model_dir)
    yield st
    st.close()


@pytest.fixture(scope="module")
def guard_off(model_dir: Path):
    st = make_server(model_dir, obs_guard="off")
    yield st
    st.close()


def obs_msg(obs_O, avail_A) -> agent_pb2.Observation:
    return agent_pb2.Observation(obs=np.asarray(obs_O).tolist(), avail_actions=np.asarray(avail_A).tolist())


def decide(stub, eid: str, obs_O, avail_A, start: bool = False, end: bool = False) -> agent_pb2.Decision:
    return stub.Decide(agent_pb2.DecideRequest(episode_id=eid, start=start, end=end, observation=obs_msg(obs_O, avail_A)))


def refusal(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        fn()
    return exc.value


def metric(st: ServerThread, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{st.server.metrics_port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


GOOD = obs_msg(np.zeros(OBS_DIM, np.float32), [True, True])
VALID_DECIDE = agent_pb2.DecideRequest(episode_id="ok-1", start=True, end=True, observation=GOOD).SerializeToString()


@pytest.mark.parametrize("method, data, what", [
    (DECIDE, b"\xff", "malformed DecideRequest"),
    (DECIDE, VALID_DECIDE[:-3], "malformed DecideRequest"),
    (DECIDE, b"\x0a\x02\xc3\x28" + VALID_DECIDE[VALID_DECIDE.index(b"\x10"):], "malformed DecideRequest"),  # bad UTF-8 id
    (GET_SPEC, b"\xff", "malformed GetSpecRequest"),
    (GET_SPEC, b"\x0a\x05ab", "malformed GetSpecRequest"),
])
def test_undecodable_bytes_are_invalid_argument_without_traceback(server, caplog, method, data, what):
    call = server.channel().unary_unary(method)  # no serializers: raw bytes
    before = metric(server, "marl_agent_decisions_total", code="INVALID_ARGUMENT")
    with caplog.at_level(logging.WARNING):
        err = refusal(lambda: call(data, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and what in err.details()
    assert not [r for r in caplog.records if r.exc_info], "a client's bytes logged a traceback"
    assert metric(server, "marl_agent_decisions_total", code="INVALID_ARGUMENT") == before + 1
    assert call(VALID_DECIDE if method == DECIDE else b"", timeout=10)  # the server goes on


def test_refusals_are_rate_limited_per_peer_and_escaped(server, caplog):
    stub = agent_pb2_grpc.AgentServiceStub(server.channel())
    forged = "x\n2026-01-01 00:00:00 INFO marlctl: all is well"
    with caplog.at_level(logging.WARNING, logger="marlctl.serving.servicer"):
        for i in range(30):
            eid = forged if i == 0 else ("y" * 3_000_000 if i == 1 else f"bad id {i}")
            assert refusal(lambda eid=eid: decide(stub, eid, np.zeros(OBS_DIM), [True, True], start=True)).code() == \
                grpc.StatusCode.INVALID_ARGUMENT
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(lines) <= 10, f"{len(lines)} refusal lines for 30 refusals from one peer"
    assert all("\n" not in line and len(line) < 1000 for line in lines)
    assert any("\\n2026-01-01" in line for line in lines)  # the forged line is there, escaped, inside one line


@pytest.mark.parametrize("eid", ["a\n", "x" * 128 + "\n", "", "x" * 129])
def test_episode_id_must_match_whole(server, eid):
    stub = agent_pb2_grpc.AgentServiceStub(server.channel())
    err = refusal(lambda: decide(stub, eid, np.zeros(OBS_DIM), [True, True], start=True))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "episode_id" in err.details()


def test_non_finite_scores_refuse_the_row_and_leave_the_episode_as_it_was(model_dir, guard_off):
    rng = np.random.default_rng(5)
    obs_TO = rng.random((4, OBS_DIM)).astype(np.float32)
    avail_TA = np.array([[True, True], [False, True], [True, False], [False, True]])
    ref_a, ref_q = reference(model_dir, obs_TO, avail_TA)
    stub = agent_pb2_grpc.AgentServiceStub(guard_off.channel())
    before = metric(guard_off, "marl_agent_decisions_total", code="INVALID_ARGUMENT")
    got = [decide(stub, "nf-1", obs_TO[0], avail_TA[0], start=True)]
    for t in range(1, 4):
        for bad in (EXTREME, MIXED):  # the mask allows only one action: the old server answered action 0 here
            err = refusal(lambda bad=bad, t=t: decide(stub, "nf-1", bad, avail_TA[t]))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "not finite" in err.details()
        got.append(decide(stub, "nf-1", obs_TO[t], avail_TA[t], end=t == 3))
    assert [d.step for d in got] == [0, 1, 2, 3]
    np.testing.assert_array_equal([d.action for d in got], ref_a)  # the NaN state never reached the episode
    np.testing.assert_allclose([list(d.scores) for d in got], ref_q, atol=1e-6)
    assert metric(guard_off, "marl_agent_decisions_total", code="INVALID_ARGUMENT") == before + 6
    # the per-episode stream refuses it too (and ends: a stream's refusal ends its episode)
    err = refusal(lambda: list(stub.Episode(iter([obs_msg(obs_TO[0], avail_TA[0]), obs_msg(EXTREME, [False, True])]))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "not finite" in err.details()


def test_non_finite_scores_refuse_only_their_row_on_the_multiplexed_stream(model_dir, guard_off):
    rng = np.random.default_rng(6)
    obs_TO = rng.random((2, OBS_DIM)).astype(np.float32)
    avail_TA = np.array([[False, True], [True, True]])
    ref_a, _ = reference(model_dir, obs_TO, avail_TA)
    call = guard_off.channel().stream_stream(f"/{SERVICE_NAME}/Episodes")
    msgs = [
        wire.encode_observation_batch(np.array([0, 1]), np.array([True, True]), np.stack([obs_TO[0], obs_TO[0]]),
                                      np.stack([avail_TA[0], avail_TA[0]])),
        wire.encode_observation_batch(np.array([0, 1]), np.array([False, False]), np.stack([obs_TO[1], MIXED]),
                                      np.stack([avail_TA[1], avail_TA[1]])),
        wire.encode_observation_batch(np.array([1]), np.array([False]), obs_TO[1:2], avail_TA[1:2]),
    ]
    r0, r1, r2 = (wire.decode_decision_batch(r) for r in call(iter(msgs)))
    assert r0.codes.tolist() == [0, 0]
    assert r1.codes.tolist() == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0]] and "slot 1" in r1.error
    assert "not finite" in r1.error and r1.actions.tolist()[1] == -1
    assert r1.actions[0] == ref_a[1] and r2.codes.tolist() == [0] and r2.steps.tolist() == [1]
    assert r2.actions[0] == ref_a[1]  # slot 1 was left at step 1 with its finite state


def test_export_records_the_observation_range_and_serve_guards_with_it(model_dir, server):
    import onnxruntime as ort

    manifest = json.loads((model_dir / "manifest.json").read_text())
    entry = manifest["agents"][1]
    meta = ort.InferenceSession(str(model_dir / entry["file"])).get_modelmeta().custom_metadata_map
    assert json.loads(meta["obs_low"]) == entry["obs_low"] and json.loads(meta["obs_high"]) == entry["obs_high"]
    assert len(entry["obs_low"]) == OBS_DIM and all(lo <= hi for lo, hi in zip(entry["obs_low"], entry["obs_high"], strict=True))
    stub = agent_pb2_grpc.AgentServiceStub(server.channel())  # default --obs-guard refuse
    far = np.array(entry["obs_high"], np.float32)
    far[3] += 50.0
    for bad in (EXTREME, far):
        err = refusal(lambda bad=bad: decide(stub, "g-1", bad, [True, True], start=True))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside what the model handles" in err.details()
    near = np.array(entry["obs_high"], np.float32) + 0.5  # inside the margin: served
    assert decide(stub, "g-2", near, [True, True], start=True, end=True).step == 0


def test_obs_guard_clip_decides_on_the_clipped_observation(model_dir):
    st = make_server(model_dir, obs_guard="clip", obs_margin=0.0)
    try:
        entry = json.loads((model_dir / "manifest.json").read_text())["agents"][1]
        lo, hi = np.array(entry["obs_low"], np.float32), np.array(entry["obs_high"], np.float32)
        obs_TO = np.stack([MIXED, EXTREME]).astype(np.float32)
        avail_TA = np.array([[False, True], [True, False]])
        ref_a, ref_q = reference(model_dir, np.clip(obs_TO, lo, hi), avail_TA)
        stub = agent_pb2_grpc.AgentServiceStub(st.channel())
        got = [decide(stub, "c-1", obs_TO[t], avail_TA[t], start=t == 0, end=t == 1) for t in range(2)]
        np.testing.assert_array_equal([d.action for d in got], ref_a)
        np.testing.assert_allclose([list(d.scores) for d in got], ref_q, atol=1e-6)
    finally:
        st.close()


def test_message_size_limit_applies_to_every_rpc(model_dir):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    st = make_server(model_dir, max_message_bytes=4096)
    try:
        ch = st.channel()
        big = b"\x0a" + wire._encode_varint(8000) + b"a" * 8000  # field 1 (a string) of 8000 bytes
        calls = {
            "Decide": lambda: ch.unary_unary(DECIDE)(big, timeout=10),
            "GetSpec": lambda: ch.unary_unary(GET_SPEC)(big, timeout=10),
            "Episode": lambda: list(ch.stream_stream(f"/{SERVICE_NAME}/Episode")(iter([big]), timeout=10)),
            "Episodes": lambda: list(ch.stream_stream(f"/{SERVICE_NAME}/Episodes")(iter([big]), timeout=10)),
            "Health": lambda: health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="x" * 8000),
                                                                    timeout=10),
            "Reflection": lambda: list(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(file_by_filename="x" * 8000)]), timeout=10)),
        }
        for name, fn in calls.items():
            assert refusal(fn).code() == grpc.StatusCode.RESOURCE_EXHAUSTED, name
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        assert decide(stub, "after", np.zeros(OBS_DIM), [True, True], start=True, end=True).step == 0
        assert len(st.server.servicer.episodes) == 0
    finally:
        st.close()


def test_big_refused_messages_leave_nothing_behind(model_dir, tmp_path):
    from serving_procs import start_agent, wait_until

    agent = start_agent(model_dir, 1, tmp_path)
    try:
        def rss_kib() -> int:
            status = Path(f"/proc/{agent.proc.pid}/status").read_text()
            return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

        with grpc.insecure_channel(agent.address) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            huge_id = "z" * 3_000_000

            def burst(n: int) -> None:
                for _ in range(n):
                    err = refusal(lambda: decide(stub, huge_id, np.zeros(OBS_DIM), [True, True], start=True))
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

            burst(10)  # allocator pools reach their steady size
            base = rss_kib()
            burst(40)
            # what the refusals left is freed within the server's collection period (GC_PERIOD_S): poll for it
            wait_until(lambda: rss_kib() - base < 16 * 1024, 20, "RSS back within 16 MiB of its level before 40 "
                       "refused 3 MB requests (120 MB if they were kept)", period_s=0.1,
                       detail=lambda: f"grew {rss_kib() - base} KiB")
            assert decide(stub, "after-big", np.zeros(OBS_DIM), [True, True], start=True, end=True).step == 0
        log_text = agent.log.read_text()
        assert max(len(line) for line in log_text.splitlines()) < 2000, "a client's 3 MB id reached the log"
    finally:
        agent.stop()


def test_concurrent_unary_episodes_share_onnx_runtime_calls_and_match_reference(model_dir):
    import threading

    st = make_server(model_dir, batching="loop", unary_window_us=50_000)  # a long window: lock-stepped calls meet
    try:
        stub = agent_pb2_grpc.AgentServiceStub(st.channel())
        rng = np.random.default_rng(9)
        inputs = [(rng.random((6, OBS_DIM)).astype(np.float32), rng.random((6, N_ACTIONS)) < 0.7) for _ in range(6)]
        for _, avail in inputs:
            avail[~avail.any(1), 0] = True
        refs = [reference(model_dir, o, a) for o, a in inputs]
        got: dict[int, list] = {}
        barrier = threading.Barrier(len(inputs))

        def worker(k: int) -> None:
            obs, avail = inputs[k]
            barrier.wait(10)
            got[k] = [decide(stub, f"u-{k}", obs[t], avail[t], start=t == 0, end=t == 5) for t in range(6)]

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(got) == list(range(len(inputs)))
        for k, (ref_a, ref_q) in enumerate(refs):
            np.testing.assert_array_equal([d.action for d in got[k]], ref_a)
            np.testing.assert_allclose([list(d.scores) for d in got[k]], ref_q, atol=1e-5)
        assert max(d.timing.batch_size for k in got for d in got[k]) >= 2, "no unary decision shared an ORT call"
        assert len(st.server.servicer.episodes) == 0 and st.server.servicer.episodes.unary == 0
    finally:
        st.close()


def test_streams_flooding_past_the_bound_get_resource_exhausted_with_a_reason(model_dir):
    import asyncio

    st = make_server(model_dir, max_episodes=8)
    good = obs_msg(np.zeros(OBS_DIM, np.float32), [True, True])

    async def one(stub) -> tuple[grpc.StatusCode, str, int]:
        call, got = stub.Episode(), 0
        try:
            for _ in range(4):
                await call.write(good)
                if await call.read() is grpc.aio.EOF:
                    break
                got += 1
            await call.done_writing()
            return await call.code(), await call.details() or "", got
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", got

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(st.target) as ch:  # the client on its own loop, in this thread
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            holders = [stub.Episode() for _ in range(8)]
            for call in holders:  # the bound is full
                await call.write(good)
                assert (await call.read()).step == 0
            flooded = await asyncio.gather(*(one(stub) for _ in range(56)))
            assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and "live-episode bound reached (8)" in details
                       for code, details, _ in flooded), flooded
            for call in holders:
                await call.done_writing()
                assert await call.code() == grpc.StatusCode.OK
            for _ in range(3):  # free for all: whoever gets a slot finishes, the rest are told why
                results = await asyncio.gather(*(one(stub) for _ in range(64)))
                assert all((code, got) == (grpc.StatusCode.OK, 4) or (
                    code == grpc.StatusCode.RESOURCE_EXHAUSTED and "live-episode bound" in details)
                    for code, details, got in results), results

    try:
        asyncio.run(scenario())
        wait_for(lambda: len(st.server.servicer.episodes) == 0, 10, "every flooded stream's episode to end")
    finally:
        st.close()
