"""Fast wire codecs for the streams' hot messages: Observation(Batch) bytes -> NumPy, Decision(Batch) -> bytes.

The ``Episode`` stream carries one Observation in and one Decision out per decision; the
multiplexed ``Episodes`` stream one ObservationBatch / DecisionBatch per message (all fields
packed fixed-width arrays, read and written whole with NumPy on both sides). Converting
protobuf repeated fields to NumPy element by element costs more than the agent network itself,
so the stream handler gets raw bytes and this module reads the packed float/bool fields with
``np.frombuffer`` and writes the Decision with ``struct``/NumPy. The layout is the standard
protobuf wire format of ``proto/agent.proto``; anything this reader does not handle (unpacked
repeated fields, split packed chunks, unknown fields) returns None and the caller falls back to
the protobuf parser, so every valid encoding is still accepted.
"""
from __future__ import annotations

import numpy as np
from marlctl.proto import agent_pb2


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a varint at ``pos``; returns (value, next position). Raises IndexError when truncated."""
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


_ONE_BYTE = [bytes((i,)) for i in range(128)]


def _encode_varint(value: int) -> bytes:
    if value < 128:
        return _ONE_BYTE[value]
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def parse_observation(data: bytes) -> tuple[np.ndarray, np.ndarray, str] | None:
    """``(obs float32 [O], avail bool [A], episode_id)`` from a serialized Observation, or None when the
    encoding is not the plain packed one (the caller then uses the protobuf parser)."""
    where = _length_delimited(data, 3)
    if where is None:
        return None
    obs_O, avail_A = _array(data, where, 1, "<f4"), _bools(data, where, 2)
    if obs_O is None or avail_A is None:
        return None
    pos, n = where.get(3, (0, 0))
    try:
        episode_id = data[pos: pos + n].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return obs_O, avail_A, episode_id


def decode_observation(data: bytes) -> tuple[np.ndarray, np.ndarray, str]:
    """Like ``parse_observation`` but accepting any valid encoding; raises ``ValueError`` on bytes that
    are not an Observation."""
    fast = parse_observation(data)
    if fast is not None:
        return fast
    from google.protobuf.message import DecodeError

    try:
        msg = agent_pb2.Observation.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"malformed Observation message: {exc}") from None
    return np.array(msg.obs, np.float32), np.array(msg.avail_actions, bool), msg.episode_id


def decode_decide_request(data: bytes) -> tuple[str, bool, bool, tuple[np.ndarray, np.ndarray] | None]:
    """``(episode_id, start, end, (obs [O], avail [A]) or None)`` from a serialized ``DecideRequest`` (any valid
    encoding); raises ``ValueError`` on bytes that are not one (truncated, invalid UTF-8 in a string, ...)."""
    fast = _parse_decide_request(data)
    if fast is not None:
        return fast
    from google.protobuf.message import DecodeError

    try:
        msg = agent_pb2.DecideRequest.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"malformed DecideRequest message: {exc}") from None
    obs = None
    if msg.HasField("observation"):
        obs = np.array(msg.observation.obs, np.float32), np.array(msg.observation.avail_actions, bool)
    return msg.episode_id, msg.start, msg.end, obs


def _parse_decide_request(data: bytes) -> tuple[str, bool, bool, tuple[np.ndarray, np.ndarray] | None] | None:
    """The canonical encoding of a ``DecideRequest`` read directly (None: let the protobuf parser decide)."""
    eid, start, end, obs = "", False, False, None
    pos, n_data, seen = 0, len(data), 0
    try:
        while pos < n_data:
            tag = data[pos]
            number, kind = tag >> 3, tag & 7
            if not 1 <= number <= 4 or seen & (1 << number):
                return None
            seen |= 1 << number
            if kind == 0 and number in (2, 3):
                value, pos = _varint(data, pos + 1)
                if value > 1:
                    return None
                if number == 2:
                    start = bool(value)
                else:
                    end = bool(value)
                continue
            if kind != 2 or number not in (1, 4):
                return None
            n, pos = _varint(data, pos + 1)
            if pos + n > n_data:
                return None
            if number == 1:
                eid = data[pos: pos + n].decode("utf-8")
            else:
                parsed = parse_observation(data[pos: pos + n])
                if parsed is None:
                    return None
                obs = parsed[0], parsed[1]
            pos += n
    except (IndexError, ValueError):  # UnicodeDecodeError is a ValueError: the protobuf parser words it
        return None
    return eid, start, end, obs


def encode_decision(action: int, scores_A: np.ndarray, step: int, decision_ns: int, inference_ns: int,
                    batch_size: int) -> bytes:
    """The serialized ``Decision`` (bytes the protobuf parser reads back as the same message)."""
    if action < 0:  # int32 negatives are 10-byte two's-complement varints on the wire
        action += 1 << 64
    scores = np.ascontiguousarray(scores_A, "<f4").tobytes()
    timing = (b"\x08" + _encode_varint(decision_ns) + b"\x10" + _encode_varint(inference_ns)
              + b"\x18" + _encode_varint(batch_size))
    return b"".join((
        b"\x08", _encode_varint(action),
        b"\x12", _encode_varint(len(scores)), scores,
        b"\x18", _encode_varint(step),
        b"\x22", _encode_varint(len(timing)), timing,
    ))


# ---- Episodes stream: ObservationBatch / DecisionBatch -----------------------------------------------------------
# Every field of both messages is length-delimited (packed fixed-width arrays, a string, a sub-message), so a
# message is a sequence of (tag, length, bytes); each array is one np.frombuffer.

def _length_delimited(data: bytes, fields: int) -> dict[int, tuple[int, int]] | None:
    """``{field number: (start, length)}`` of a message made only of length-delimited fields numbered
    1..``fields``, each at most once; None for anything else (the caller falls back to protobuf)."""
    out: dict[int, tuple[int, int]] = {}
    pos, end = 0, len(data)
    try:
        while pos < end:
            tag = data[pos]
            number = tag >> 3
            if tag & 7 != 2 or not 1 <= number <= fields or number in out:
                return None
            n, pos = _varint(data, pos + 1)
            if pos + n > end:
                return None
            out[number] = (pos, n)
            pos += n
    except (IndexError, ValueError):
        return None
    return out


_DTYPES = {name: np.dtype(name) for name in ("<f4", "<u4", "<i4")}
_BOOL = np.dtype(bool)


def _array(data: bytes, where: dict[int, tuple[int, int]], number: int, dtype: str) -> np.ndarray | None:
    pos, n = where.get(number, (0, 0))
    dt = _DTYPES[dtype]
    if n % dt.itemsize:
        return None
    return np.frombuffer(data, dt, n // dt.itemsize, pos)


def _bools(data: bytes, where: dict[int, tuple[int, int]], number: int) -> np.ndarray | None:
    pos, n = where.get(number, (0, 0))
    if data[pos: pos + n].translate(None, b"\x00\x01"):  # multi-byte bool varints: legal but not canonical
        return None
    return np.frombuffer(data, _BOOL, n, pos)  # 0/1 bytes are valid bools: no copy


def _field(number: int, payload: bytes) -> bytes:
    return b"" if not payload else bytes((number << 3 | 2,)) + _encode_varint(len(payload)) + payload


class ObservationRows:
    """A decoded ``ObservationBatch``: ``slots`` uint32 [R], ``start`` bool [R], ``obs`` float32 [R*O] and
    ``avail`` bool [R*A] (flat: the caller knows O and A), ``end`` uint32 [E]."""

    __slots__ = ("slots", "start", "obs", "avail", "end")

    def __init__(self, slots: np.ndarray, start: np.ndarray, obs: np.ndarray, avail: np.ndarray,
                 end: np.ndarray) -> None:
        self.slots, self.start, self.obs, self.avail, self.end = slots, start, obs, avail, end


def decode_observation_batch(data: bytes) -> ObservationRows:
    """Read an ``ObservationBatch`` (any valid encoding); raises ``ValueError`` on bytes that are not one."""
    where = _length_delimited(data, 5)
    if where is not None:
        arrays = (_array(data, where, 1, "<u4"), _bools(data, where, 2), _array(data, where, 3, "<f4"),
                  _bools(data, where, 4), _array(data, where, 5, "<u4"))
        if all(a is not None for a in arrays):
            return ObservationRows(*arrays)  # type: ignore[arg-type]
    from google.protobuf.message import DecodeError

    try:
        msg = agent_pb2.ObservationBatch.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"malformed ObservationBatch message: {exc}") from None
    return ObservationRows(np.array(msg.slots, np.uint32), np.array(msg.start, bool), np.array(msg.obs, np.float32),
                           np.array(msg.avail_actions, bool), np.array(msg.end, np.uint32))


def encode_observation_batch(slots_R: np.ndarray, start_R: np.ndarray, obs_RO: np.ndarray, avail_RA: np.ndarray,
                             end_E: np.ndarray | None = None) -> bytes:
    """The serialized ``ObservationBatch`` (the runner's side)."""
    return b"".join((
        _field(1, np.ascontiguousarray(slots_R, "<u4").tobytes()),
        _field(2, np.ascontiguousarray(start_R, bool).tobytes()),
        _field(3, np.ascontiguousarray(obs_RO, "<f4").tobytes()),
        _field(4, np.ascontiguousarray(avail_RA, bool).tobytes()),
        _field(5, b"" if end_E is None else np.ascontiguousarray(end_E, "<u4").tobytes()),
    ))


class DecisionRows:
    """A decoded ``DecisionBatch``: ``actions`` int32 [R], ``scores`` float32 [R*A], ``codes`` and ``steps``
    uint32 [R], ``error`` str, ``batch_size`` (rows decided by the server's ONNX Runtime call)."""

    __slots__ = ("actions", "scores", "codes", "steps", "error", "batch_size")

    def __init__(self, actions: np.ndarray, scores: np.ndarray, codes: np.ndarray, steps: np.ndarray, error: str,
                 batch_size: int) -> None:
        self.actions, self.scores, self.codes, self.steps = actions, scores, codes, steps
        self.error, self.batch_size = error, batch_size


def encode_decision_batch(actions_R: np.ndarray, scores_RA: np.ndarray, codes_R: np.ndarray, steps_R: np.ndarray,
                          error: str, decision_ns: int, inference_ns: int, batch_size: int) -> bytes:
    """The serialized ``DecisionBatch`` (the server's side)."""
    timing = (b"\x08" + _encode_varint(decision_ns) + b"\x10" + _encode_varint(inference_ns)
              + b"\x18" + _encode_varint(batch_size))
    return b"".join((
        _field(1, np.ascontiguousarray(actions_R, "<i4").tobytes()),
        _field(2, np.ascontiguousarray(scores_RA, "<f4").tobytes()),
        _field(3, np.ascontiguousarray(codes_R, "<u4").tobytes()),
        _field(4, np.ascontiguousarray(steps_R, "<u4").tobytes()),
        _field(5, error.encode("utf-8")),
        _field(6, timing),
    ))


def decode_decision_batch(data: bytes) -> DecisionRows:
    """Read a ``DecisionBatch`` (any valid encoding); raises ``ValueError`` on bytes that are not one."""
    where = _length_delimited(data, 6)
    if where is not None:
        arrays = (_array(data, where, 1, "<i4"), _array(data, where, 2, "<f4"), _array(data, where, 3, "<u4"),
                  _array(data, where, 4, "<u4"))
        if all(a is not None for a in arrays):
            (pos, n), (tpos, tn) = where.get(5, (0, 0)), where.get(6, (0, 0))
            try:
                error = data[pos: pos + n].decode("utf-8")
                timing = agent_pb2.ServerTiming.FromString(data[tpos: tpos + tn])
            except Exception:  # noqa: BLE001 - let the protobuf parser below give the real error
                pass
            else:
                return DecisionRows(*arrays, error, timing.batch_size)  # type: ignore[arg-type]
    from google.protobuf.message import DecodeError

    try:
        msg = agent_pb2.DecisionBatch.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"malformed DecisionBatch message: {exc}") from None
    return DecisionRows(np.array(msg.actions, np.int32), np.array(msg.scores, np.float32), np.array(msg.codes, np.uint32),
                        np.array(msg.steps, np.uint32), msg.error, msg.timing.batch_size)
