"""Property-based fuzzing of the agent service over a real socket (hypothesis, bounded): every RPC gets arbitrary
bytes and arbitrary well-typed messages (extreme floats, wrong lengths, odd ids, slots past the bound).

Properties: a client error is answered with a client-error status (never UNKNOWN or INTERNAL); every decision
is an available action; the server stays SERVING; and a reference episode (one per-episode stream and one unary
episode) running concurrently through all of it decides exactly like in-process ONNX Runtime. Bounded: derandomized
examples, ``max_examples`` per property, the whole file well under a minute on 2 cores.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marlctl.proto import agent_pb2, agent_pb2_grpc
from marlctl.serving import wire
from marlctl.serving.server import SERVICE_NAME, ServerConfig
from serving_helpers import ServerThread, export_model, reference

OBS_DIM, N_ACTIONS, MAX_EPISODES = 10, 2, 48
IDLE_TIMEOUT_S = 5.0
CLIENT_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.RESOURCE_EXHAUSTED}
ROW_CODES = {0} | {c.value[0] for c in CLIENT_CODES}
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
huge = st.sampled_from([3.4e38, -3.4e38, 1e30, -1e30, 1e20])  # finite, but the model's scores overflow to NaN
values = st.one_of(floats32, huge, st.sampled_from([0.0, 1.0, -1.0, float("nan"), float("inf"), 1e-45, 65504.0]))
finite_values = st.one_of(huge, st.floats(-1e6, 1e6, width=32))
ids = st.one_of(st.sampled_from(["a", "b", "c", "a\n", "x" * 128, "x" * 129, "", "é", "a b"]),
                st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))


def lengths(n: int) -> st.SearchStrategy[int]:
    return st.one_of(st.just(n), st.integers(0, 2 * n + 1))


@st.composite
def observations(draw) -> agent_pb2.Observation:
    """Half well-formed with finite (often huge) values and a one-action mask, half anything."""
    if draw(st.booleans()):
        obs = draw(st.lists(finite_values, min_size=OBS_DIM, max_size=OBS_DIM))
        avail = draw(st.sampled_from([[False, True], [True, False], [True, True]]))
    else:
        n_obs, n_avail = draw(lengths(OBS_DIM)), draw(lengths(N_ACTIONS))
        obs = draw(st.lists(values, min_size=n_obs, max_size=n_obs))
        avail = draw(st.lists(st.booleans(), min_size=n_avail, max_size=n_avail))
    return agent_pb2.Observation(obs=obs, avail_actions=avail, episode_id=draw(ids))


@st.composite
def decide_requests(draw) -> agent_pb2.DecideRequest:
    eid = draw(st.one_of(st.sampled_from(["a", "b", "c", "d"]), ids))
    req = agent_pb2.DecideRequest(episode_id=eid, start=draw(st.booleans()), end=draw(st.booleans()))
    if draw(st.integers(0, 3)):
        req.observation.CopyFrom(draw(observations()))
    return req


@st.composite
def observation_batches(draw) -> bytes:
    R = draw(st.integers(0, 6))
    slots = draw(st.lists(st.integers(0, MAX_EPISODES + 2), min_size=R, max_size=R))
    if draw(st.booleans()):  # well-formed rows, finite (often huge) values
        obs = np.array(draw(st.lists(finite_values, min_size=R * OBS_DIM, max_size=R * OBS_DIM)), np.float32)
        avail = np.array(draw(st.lists(st.sampled_from([[False, True], [True, False], [True, True]]), min_size=R,
                                       max_size=R)), bool).reshape(-1)
        slots = list(dict.fromkeys(slots))
        R = len(slots)
        obs, avail = obs[: R * OBS_DIM], avail[: R * N_ACTIONS]
    else:
        n_obs = draw(st.one_of(st.just(R * OBS_DIM), st.integers(0, R * OBS_DIM + 3)))
        n_avail = draw(st.one_of(st.just(R * N_ACTIONS), st.integers(0, R * N_ACTIONS + 3)))
        obs = np.array(draw(st.lists(values, min_size=n_obs, max_size=n_obs)), np.float32)
        avail = np.array(draw(st.lists(st.booleans(), min_size=n_avail, max_size=n_avail)), bool)
    start = np.array(draw(st.lists(st.booleans(), min_size=R, max_size=R)), bool)
    end = np.array(draw(st.lists(st.integers(0, MAX_EPISODES + 2), max_size=3)), np.uint32)
    return wire.encode_observation_batch(np.array(slots, np.uint32), start, obs, avail, end)


def available(action: int, avail: list[bool] | np.ndarray) -> bool:
    return 0 <= action < len(avail) and bool(avail[action])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tmp_path_factory.mktemp("model"))


class ReferenceEpisodes:
    """A per-episode stream and a unary episode, one step every few ms for as long as the fuzzing runs; their
    decisions are compared with in-process ONNX Runtime at the end."""

    def __init__(self, model_dir: Path, channel: grpc.Channel, steps: int = 4000) -> None:
        rng = np.random.default_rng(11)
        self.obs_TO = rng.random((steps, OBS_DIM)).astype(np.float32)
        self.avail_TA = rng.random((steps, N_ACTIONS)) < 0.7
        self.avail_TA[~self.avail_TA.any(1), 0] = True
        self.model_dir = model_dir
        self.stub = agent_pb2_grpc.AgentServiceStub(channel)
        self.stop = threading.Event()
        self.got: dict[str, list[tuple[int, list[float]]]] = {"stream": [], "unary": []}
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._stream, daemon=True),
                        threading.Thread(target=self._unary, daemon=True)]
        for t in self.threads:
            t.start()

    def _inputs(self):
        for t in range(len(self.obs_TO)):
            if self.stop.is_set():
                return
            time.sleep(0.003)
            yield t, agent_pb2.Observation(obs=self.obs_TO[t].tolist(), avail_actions=self.avail_TA[t].tolist())

    def _stream(self) -> None:
        try:
            for d in self.stub.Episode(msg for _, msg in self._inputs()):
                self.got["stream"].append((d.action, list(d.scores)))
        except grpc.RpcError as exc:
            self.errors.append(f"reference stream: {exc.code().name} {exc.details()}")

    def _unary(self) -> None:
        try:
            for t, msg in self._inputs():
                d = self.stub.Decide(agent_pb2.DecideRequest(episode_id="reference-unary", start=t == 0,
                                                             observation=msg), timeout=30)
                self.got["unary"].append((d.action, list(d.scores)))
        except grpc.RpcError as exc:
            self.errors.append(f"reference unary: {exc.code().name} {exc.details()}")

    def check(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not self.errors, self.errors
        for kind, got in self.got.items():
            T = len(got)
            assert T >= 50, f"the {kind} reference episode made only {T} steps"
            ref_a, ref_q = reference(self.model_dir, self.obs_TO[:T], self.avail_TA[:T])
            np.testing.assert_array_equal([a for a, _ in got], ref_a, err_msg=kind)
            np.testing.assert_allclose([q for _, q in got], ref_q, atol=1e-5, err_msg=kind)


@pytest.fixture(scope="module")
def served(model_dir: Path):
    # --obs-guard off: extreme observations reach the model, so the after-inference check is what is fuzzed.
    # The fuzzed unary episodes expire after IDLE_TIMEOUT_S, so the bounded table keeps taking new ones. The
    # reference unary episode is idle only between its steps (3 ms apart); at 1 s, on 2 loaded cores (a
    # fresh-clone CI run, Dec 2026), one gap reached the limit and the server rightly ended it.
    st_ = ServerThread(ServerConfig(model_dir=model_dir, agent_index=1, host="127.0.0.1", port=0, obs_guard="off",
                                    max_episodes=MAX_EPISODES, idle_timeout_s=IDLE_TIMEOUT_S,
                                    max_message_bytes=64 * 1024))
    channel = st_.channel()
    refs = ReferenceEpisodes(model_dir, st_.channel())
    yield st_, channel
    try:
        refs.check()
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        st_.close()


def code_of(fn) -> tuple[grpc.StatusCode, object]:
    try:
        return grpc.StatusCode.OK, fn()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), decide_requests().map(lambda r: r.SerializeToString())))
def test_decide_fuzz(served, data):
    server, channel = served
    code, out = code_of(lambda: channel.unary_unary(f"/{SERVICE_NAME}/Decide")(data, timeout=10))
    assert code in CLIENT_CODES, (code, out)
    if code == grpc.StatusCode.OK:
        req = agent_pb2.DecideRequest.FromString(data)
        decision = agent_pb2.Decision.FromString(out)
        if req.HasField("observation"):
            assert available(decision.action, req.observation.avail_actions), (req, decision)


@FUZZ
@given(data=st.one_of(st.binary(max_size=100), ids.map(lambda e: agent_pb2.GetSpecRequest(episode_id=e)
                                                       .SerializeToString())))
def test_get_spec_fuzz(served, data):
    _, channel = served
    code, out = code_of(lambda: channel.unary_unary(f"/{SERVICE_NAME}/GetSpec")(data, timeout=10))
    assert code in CLIENT_CODES, (code, out)
    if code == grpc.StatusCode.OK:
        assert agent_pb2.AgentSpec.FromString(out).obs_dim == OBS_DIM


@settings(FUZZ, max_examples=60)
@given(msgs=st.lists(st.one_of(st.binary(max_size=120), observations().map(lambda o: o.SerializeToString())),
                     min_size=1, max_size=6))
def test_episode_stream_fuzz(served, msgs):
    _, channel = served
    replies: list[bytes] = []

    def run() -> None:
        replies.extend(channel.stream_stream(f"/{SERVICE_NAME}/Episode")(iter(msgs), timeout=10))

    code, out = code_of(run)
    assert code in CLIENT_CODES, (code, out)
    for raw, reply in zip(msgs, replies, strict=False):  # reply i answers message i (a refusal ends the stream)
        obs = agent_pb2.Observation.FromString(raw)
        assert available(agent_pb2.Decision.FromString(reply).action, obs.avail_actions)


@settings(FUZZ, max_examples=60)
@given(msgs=st.lists(st.one_of(st.binary(max_size=120), observation_batches()), min_size=1, max_size=5))
def test_episodes_stream_fuzz(served, msgs):
    _, channel = served
    replies: list[bytes] = []

    def run() -> None:
        replies.extend(channel.stream_stream(f"/{SERVICE_NAME}/Episodes")(iter(msgs), timeout=10))

    code, out = code_of(run)
    assert code in CLIENT_CODES, (code, out)
    for raw, reply_bytes in zip(msgs, replies, strict=False):
        rows = wire.decode_observation_batch(raw)
        reply = wire.decode_decision_batch(reply_bytes)
        R = rows.slots.shape[0]
        assert reply.codes.shape[0] == R and set(reply.codes.tolist()) <= ROW_CODES
        avail_RA = rows.avail.reshape(R, N_ACTIONS)
        for r in range(R):
            if reply.codes[r] == 0:
                assert available(int(reply.actions[r]), avail_RA[r])
            else:
                assert reply.actions[r] == -1
