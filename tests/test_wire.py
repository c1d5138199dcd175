"""The stream's fast codecs agree with the protobuf runtime on every encoding they meet."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from marlctl.proto import agent_pb2
from marlctl.serving import wire
from marlctl.serving.wire import decode_observation, encode_decision, parse_observation


@pytest.mark.parametrize("obs_dim, n_actions, eid", [(0, 0, ""), (1, 1, ""), (77, 6, "ep-1"), (115, 19, "é-ünï")])
def test_fast_parse_equals_protobuf(obs_dim, n_actions, eid):
    rng = np.random.default_rng(obs_dim)
    for _ in range(20):
        obs = rng.standard_normal(obs_dim).astype(np.float32)
        obs[rng.random(obs_dim) < 0.1] = np.nan
        avail = rng.random(n_actions) < 0.5
        data = agent_pb2.Observation(obs=obs.tolist(), avail_actions=avail.tolist(), episode_id=eid).SerializeToString()
        fast = parse_observation(data)
        assert fast is not None
        np.testing.assert_array_equal(fast[0], obs)  # NaN == NaN for assert_array_equal
        assert fast[0].dtype == np.float32 and fast[1].dtype == bool
        np.testing.assert_array_equal(fast[1], avail)
        assert fast[2] == eid


def test_non_canonical_encodings_fall_back_to_protobuf():
    obs = [1.5, -2.0, 3.25]
    unpacked = b"".join(b"\x0d" + struct.pack("<f", x) for x in obs) + b"\x10\x01\x10\x00"
    split = b"\x0a\x04" + struct.pack("<f", obs[0]) + b"\x0a\x08" + struct.pack("<2f", *obs[1:]) + b"\x12\x02\x01\x00"
    unknown = agent_pb2.Observation(obs=obs, avail_actions=[True, False]).SerializeToString() + b"\x20\x07"
    wide_bool = b"\x0a\x0c" + struct.pack("<3f", *obs) + b"\x12\x03\x81\x00\x00"  # bool true as a 2-byte varint
    for data in (unpacked, split, unknown, wide_bool):
        assert parse_observation(data) is None
        want = agent_pb2.Observation.FromString(data)
        got = decode_observation(data)
        np.testing.assert_array_equal(got[0], np.array(want.obs, np.float32))
        np.testing.assert_array_equal(got[1], np.array(want.avail_actions, bool))


@pytest.mark.parametrize("data", [b"\x0a\x09\x00", b"\x0a\xff", b"\xff\xff\xff", b"\x0a\x05" + b"\x00" * 5])
def test_malformed_bytes_raise_value_error(data):
    with pytest.raises(ValueError, match="malformed Observation"):
        decode_observation(data)


@pytest.mark.parametrize("action, step, ns", [(0, 0, 0), (3, 7, 123_456), (-1, 2**31, 2**63 - 1), (2**31 - 1, 1, 1)])
def test_encoded_decision_reads_back_identically(action, step, ns):
    scores = np.array([0.5, -1.25, np.inf, 3e-8], np.float32)
    got = agent_pb2.Decision.FromString(encode_decision(action, scores, step, ns, ns // 2, 64))
    want = agent_pb2.Decision(action=action, scores=scores.tolist(), step=step,
                              timing=agent_pb2.ServerTiming(decision_ns=ns, inference_ns=ns // 2, batch_size=64))
    assert got == want


@pytest.mark.parametrize("rows", [0, 1, 7])
def test_batch_codecs_agree_with_protobuf(rows):
    rng = np.random.default_rng(rows)
    slots = rng.permutation(1000)[:rows].astype(np.uint32)
    start = rng.random(rows) < 0.5
    obs = rng.standard_normal((rows, 5)).astype(np.float32)
    avail = rng.random((rows, 3)) < 0.5
    end = np.array([7, 2**32 - 1][: rows % 3], np.uint32)
    data = wire.encode_observation_batch(slots, start, obs, avail, end)
    msg = agent_pb2.ObservationBatch.FromString(data)
    assert list(msg.slots) == slots.tolist() and list(msg.start) == start.tolist() and list(msg.end) == end.tolist()
    np.testing.assert_array_equal(np.array(msg.obs, np.float32), obs.ravel())
    assert list(msg.avail_actions) == avail.ravel().tolist()
    for got in (wire.decode_observation_batch(data), wire.decode_observation_batch(msg.SerializeToString())):
        np.testing.assert_array_equal(got.slots, slots)
        np.testing.assert_array_equal(got.start, start)
        np.testing.assert_array_equal(got.obs, obs.ravel())
        np.testing.assert_array_equal(got.avail, avail.ravel())
        np.testing.assert_array_equal(got.end, end)
    actions = rng.integers(-1, 3, rows).astype(np.int32)
    scores = rng.standard_normal((rows, 3)).astype(np.float32)
    codes = rng.choice([0, 3, 9], rows).astype(np.uint32)
    steps = rng.integers(0, 300, rows).astype(np.uint32)
    data = wire.encode_decision_batch(actions, scores, codes, steps, "why" * rows, 12345, 678, rows)
    msg = agent_pb2.DecisionBatch.FromString(data)
    assert list(msg.actions) == actions.tolist() and list(msg.codes) == codes.tolist()
    assert msg.error == "why" * rows and msg.timing.decision_ns == 12345 and msg.timing.batch_size == rows
    for got in (wire.decode_decision_batch(data), wire.decode_decision_batch(msg.SerializeToString())):
        np.testing.assert_array_equal(got.actions, actions)
        np.testing.assert_array_equal(got.scores, scores.ravel())
        np.testing.assert_array_equal(got.codes, codes)
        np.testing.assert_array_equal(got.steps, steps)
        assert got.error == "why" * rows and got.batch_size == rows


def test_batch_decoders_refuse_bytes_that_are_not_their_message():
    for decode in (wire.decode_observation_batch, wire.decode_decision_batch):
        with pytest.raises(ValueError, match="malformed"):
            decode(b"\x0a\xff\xff")


def test_decide_request_codec_agrees_with_protobuf():
    rng = np.random.default_rng(3)
    for k in range(40):
        req = agent_pb2.DecideRequest(episode_id=["", "ep-1", "é" * 3][k % 3], start=bool(k & 1), end=bool(k & 2))
        if k % 4:
            req.observation.obs.extend(rng.standard_normal(k % 7).astype(np.float32).tolist())
            req.observation.avail_actions.extend((rng.random(k % 5) < 0.5).tolist())
        data = req.SerializeToString()
        for blob in (data, data + agent_pb2.DecideRequest(end=True).SerializeToString()):  # repeated field: last wins
            want = agent_pb2.DecideRequest.FromString(blob)
            eid, start, end, obs = wire.decode_decide_request(blob)
            assert (eid, start, end) == (want.episode_id, want.start, want.end)
            assert (obs is None) == (not want.HasField("observation"))
            if obs is not None:
                np.testing.assert_array_equal(obs[0], np.array(want.observation.obs, np.float32))
                np.testing.assert_array_equal(obs[1], np.array(want.observation.avail_actions, bool))
    for bad in (b"\xff", b"\x0a\x05ab", b"\x0a\x02\xc3\x28", b"\x22\x03\x0a\x05\x00"):
        with pytest.raises(ValueError, match="malformed DecideRequest"):
            wire.decode_decide_request(bad)
