"""The multiplexed ``Episodes`` stream over a real socket with real ONNX Runtime: many episodes on one stream decide
exactly what separate per-episode decisions do, bad rows are refused row by row without touching the others,
malformed messages end only their stream, and the live-episode bound, drain and metrics count slots."""
from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from marlctl.proto import agent_pb2
from marlctl.serving import wire
from marlctl.serving.server import ServerConfig
from serving_helpers import ServerThread, export_model, reference, wait_for

OBS_DIM, N_ACTIONS = 10, 2
METHOD = "/marlctl.agent.v1.AgentService/Episodes"
OK, INVALID, PRECONDITION, EXHAUSTED, UNAVAILABLE = 0, 3, 9, 8, 14


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tmp_path_factory.mktemp("model"))


def make_server(model_dir: Path, **kw: object) -> ServerThread:
    kw.setdefault("metrics_port", 0)
    return ServerThread(ServerConfig(model_dir=model_dir, agent_index=1, host="127.0.0.1", port=0, **kw))


@pytest.fixture(scope="module")
def server(model_dir: Path):
    st = make_server(model_dir, max_episodes=16)
    yield st
    st.close()


class Stream:
    """A raw-bytes Episodes stream driven message by message (the sync client's request iterator is fed from a
    list that each ``send`` extends, and answers are read in order)."""

    def __init__(self, st: ServerThread) -> None:
        import queue

        self._q: queue.Queue = queue.Queue()
        self.call = st.channel().stream_stream(METHOD)(iter(self._q.get, None))

    def send(self, slots, start, obs_RO, avail_RA, end=()) -> wire.DecisionRows:
        self._q.put(wire.encode_observation_batch(np.asarray(slots), np.asarray(start, bool), obs_RO, avail_RA,
                                                  np.asarray(end, np.uint32)))
        return wire.decode_decision_batch(next(self.call))

    def close(self) -> None:
        self._q.put(None)
        list(self.call)


def episodes(seed: int, K: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs_KTO = rng.standard_normal((K, T, OBS_DIM)).astype(np.float32)
    avail_KTA = rng.random((K, T, N_ACTIONS)) < 0.6
    avail_KTA[~avail_KTA.any(-1), 0] = True
    return obs_KTO, avail_KTA


def test_multiplexed_episodes_decide_like_separate_episodes(model_dir, server):
    """Five episodes of different lengths on one stream, started at different steps, rows in a shuffled order,
    one slot reused for a new episode after its first ends."""
    K, T = 5, 9
    obs, avail = episodes(0, K, T)
    start_at = [0, 0, 2, 3, 5]
    lengths = [9, 4, 7, 6, 4]
    got_a = {k: [] for k in range(K + 1)}
    got_q = {k: [] for k in range(K + 1)}
    slot_of = {k: k for k in range(K)}
    slot_of[K] = 1  # episode 5 reuses episode 1's slot once it has ended
    obs6, avail6 = episodes(1, 1, 5)
    stream = Stream(server)
    rng = np.random.default_rng(0)
    step = {k: 0 for k in range(K + 1)}
    for t in range(14):
        active = [k for k in range(K) if start_at[k] <= t and step[k] < lengths[k]]
        if t >= 4 and step[K] < 5:
            active.append(K)
        ended = [slot_of[k] for k in range(K) if step[k] == lengths[k] and start_at[k] + lengths[k] == t]
        if not active:
            break
        rng.shuffle(active)
        rows_o = [obs6[0, step[k]] if k == K else obs[k, step[k]] for k in active]
        rows_a = [avail6[0, step[k]] if k == K else avail[k, step[k]] for k in active]
        reply = stream.send([slot_of[k] for k in active], [step[k] == 0 for k in active], np.stack(rows_o),
                            np.stack(rows_a), ended)
        assert reply.codes.tolist() == [OK] * len(active) and reply.error == ""
        assert reply.steps.tolist() == [step[k] for k in active]
        assert reply.batch_size == len(active)
        for i, k in enumerate(active):
            got_a[k].append(int(reply.actions[i]))
            got_q[k].append(reply.scores.reshape(-1, N_ACTIONS)[i])
            step[k] += 1
    stream.close()
    for k in range(K):
        ref_a, ref_q = reference(model_dir, obs[k, : lengths[k]], avail[k, : lengths[k]])
        np.testing.assert_array_equal(got_a[k], ref_a)
        np.testing.assert_allclose(np.stack(got_q[k]), ref_q, atol=1e-5)
    ref_a, ref_q = reference(model_dir, obs6[0], avail6[0])
    np.testing.assert_array_equal(got_a[K], ref_a)
    np.testing.assert_allclose(np.stack(got_q[K]), ref_q, atol=1e-5)
    wait_for(lambda: len(server.server.servicer.episodes) == 0, 10, "the closed stream's slots to be released")


def test_bad_rows_are_refused_alone_and_the_stream_goes_on(model_dir, server):
    obs, avail = episodes(2, 4, 6)
    stream = Stream(server)
    reply = stream.send([0, 1, 2], [True] * 3, obs[:3, 0], avail[:3, 0])
    assert reply.codes.tolist() == [OK] * 3
    bad_obs, bad_avail = obs[:, 1].copy(), avail[:, 1].copy()
    bad_obs[1, 4] = np.nan  # slot 1: NaN
    bad_avail[2] = False  # slot 2: all-false mask
    # slot 3 continues an episode it never started
    reply = stream.send([0, 1, 2, 3], [False] * 4, bad_obs, bad_avail)
    assert reply.codes.tolist() == [OK, INVALID, INVALID, PRECONDITION]
    assert reply.actions.tolist()[1:] == [-1, -1, -1] and np.isnan(reply.scores.reshape(4, -1)[1:]).all()
    assert "slot 1: obs has NaN/Inf" in reply.error and "slot 2: avail_actions is all false" in reply.error
    assert "slot 3: no live episode" in reply.error
    # the refused rows moved nothing: slots 1 and 2 go on from their first step, slot 0 from its second
    reply = stream.send([0, 1, 2], [False] * 3, obs[:3, 2], avail[:3, 2])
    assert reply.codes.tolist() == [OK] * 3 and reply.steps.tolist() == [2, 1, 1]
    for k, steps in ((0, [0, 1, 2]), (1, [0, 2]), (2, [0, 2])):
        ref_a, _ = reference(model_dir, obs[k, steps], avail[k, steps])
        assert int(reply.actions[k]) == ref_a[-1]
    stream.close()


@pytest.mark.parametrize(
    ("slots", "start", "obs_rows", "avail_rows", "end", "what"),
    [
        ([0, 1], [True], 2, 2, (), "start has 1 values for 2 slots"),
        ([0, 1], [True, True], 1, 2, (), "obs has 10 values, expected 2 rows x obs_dim=10"),
        ([0, 1], [True, True], 2, 3, (), "avail_actions has 6 values, expected 2 rows x n_actions=2"),
        ([3, 3], [True, True], 2, 2, (), "slots must be distinct"),
        ([16], [True], 1, 1, (), "slots must be distinct and < max_episodes=16"),
        ([0], [True], 1, 1, (99,), "end slots must be < max_episodes=16"),
    ],
)
def test_malformed_messages_end_only_their_stream(server, slots, start, obs_rows, avail_rows, end, what):
    obs, avail = episodes(3, 2, 3)
    other = Stream(server)
    assert other.send([0], [True], obs[0, :1], avail[0, :1]).codes.tolist() == [OK]
    bad = Stream(server)
    with pytest.raises(grpc.RpcError) as exc:
        bad.send(slots, start, np.zeros((obs_rows, OBS_DIM), np.float32), np.ones((avail_rows, N_ACTIONS), bool), end)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and what in exc.value.details()
    reply = other.send([0], [False], obs[0, 1:2], avail[0, 1:2])  # the other stream's episode is untouched
    assert reply.codes.tolist() == [OK] and reply.steps.tolist() == [1]
    other.close()


def test_unreadable_bytes_and_non_canonical_encodings(server):
    raw = server.channel().stream_stream(METHOD)
    with pytest.raises(grpc.RpcError) as exc:
        list(raw(iter([b"\x0a\xff\xff"])))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed ObservationBatch" in exc.value.details()
    # protobuf's own encoding with unpacked bools is valid and served (the slow path)
    msg = agent_pb2.ObservationBatch(slots=[4], start=[True], obs=[0.5] * OBS_DIM, avail_actions=[True, False])
    data = msg.SerializeToString().replace(b"\x12\x01\x01", b"\x10\x01")  # start as an unpacked varint
    assert agent_pb2.ObservationBatch.FromString(data) == msg
    (reply,) = [wire.decode_decision_batch(r) for r in raw(iter([data]))]
    assert reply.codes.tolist() == [OK] and reply.actions.tolist() == [0]  # action 1 is unavailable


def test_bound_counts_slots_of_all_streams_and_per_episode_streams(model_dir):
    from marlctl.proto import agent_pb2_grpc

    st = make_server(model_dir, max_episodes=3)
    try:
        obs, avail = episodes(4, 3, 3)
        a, b = Stream(st), Stream(st)
        assert a.send([0, 1], [True, True], obs[:2, 0], avail[:2, 0]).codes.tolist() == [OK, OK]
        # a start on a live slot (0) restarts it and needs no new place; slot 2 takes the last one
        reply = a.send([2, 0], [True, True], obs[[2, 0], 0], avail[[2, 0], 0])
        assert reply.codes.tolist() == [OK, OK] and reply.steps.tolist() == [0, 0]
        assert len(st.server.servicer.episodes) == 3
        reply = b.send([0, 1], [True, True], obs[:2, 1], avail[:2, 1])  # the bound covers every stream
        assert reply.codes.tolist() == [EXHAUSTED, EXHAUSTED] and "live-episode bound reached (3)" in reply.error
        good = agent_pb2.Observation(obs=[0.0] * OBS_DIM, avail_actions=[True, True])
        with pytest.raises(grpc.RpcError) as exc:  # and per-episode streams
            list(agent_pb2_grpc.AgentServiceStub(st.channel()).Episode(iter([good])))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reply = a.send([2], [False], obs[2:, 1], avail[2:, 1], end=[1])  # ending slot 1 frees one place
        assert reply.codes.tolist() == [OK] and reply.steps.tolist() == [1]
        reply = b.send([0, 1], [True, True], obs[:2, 2], avail[:2, 2])  # first in row order gets it
        assert reply.codes.tolist() == [OK, EXHAUSTED]
        text = urllib.request.urlopen(f"http://127.0.0.1:{st.server.metrics_port}/metrics", timeout=10).read().decode()
        model = st.server.servicer.model.sha256[:12]
        assert f'marl_agent_decisions_total{{agent="1",code="OK",model="{model}"}} 6.0' in text
        assert f'marl_agent_decisions_total{{agent="1",code="RESOURCE_EXHAUSTED",model="{model}"}} 4.0' in text
        assert 'marl_agent_decision_seconds_count{agent="1"} 6.0' in text
        assert 'marl_agent_live_episodes{agent="1"} 3.0' in text
        a.close()
        b.close()
        wait_for(lambda: len(st.server.servicer.episodes) == 0, 10, "slots released at stream end")
    finally:
        st.close()


def test_draining_refuses_new_episodes_row_by_row(model_dir):
    st = make_server(model_dir, grace_s=30.0)
    try:
        obs, avail = episodes(5, 2, 3)
        stream = Stream(st)
        assert stream.send([0], [True], obs[0, :1], avail[0, :1]).codes.tolist() == [OK]
        st.server.servicer.draining = True  # what SIGTERM sets first (the drain itself is tested on Episode)
        reply = stream.send([0, 1], [False, True], obs[:, 1], avail[:, 1])
        assert reply.codes.tolist() == [OK, UNAVAILABLE] and "draining" in reply.error
        with pytest.raises(grpc.RpcError) as exc:  # a new stream is refused as a whole
            Stream(st).send([0], [True], obs[0, :1], avail[0, :1])
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        stream.close()
    finally:
        st.close()


def test_drain_waits_for_live_slots_then_ends_the_stream_with_unavailable(model_dir):
    import asyncio

    st = make_server(model_dir, grace_s=0.3)
    try:
        obs, avail = episodes(6, 2, 2)
        stream = Stream(st)
        assert stream.send([0, 1], [True, True], obs[:, 0], avail[:, 0]).codes.tolist() == [OK, OK]
        drain = asyncio.run_coroutine_threadsafe(st.server.drain_and_stop(), st.loop)
        with pytest.raises(grpc.RpcError) as exc:  # the episodes never end; the server ends them after the grace
            next(stream.call)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE and "grace period" in exc.value.details()
        drain.result(30)
        assert len(st.server.servicer.episodes) == 0
        stream._q.put(None)  # end the client's request iterator
    finally:
        st.close()
