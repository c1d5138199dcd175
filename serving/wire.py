"""Fast wire codecs for the stream's hot messages: Observation bytes -> NumPy, Decision -> bytes.

The ``Episode`` stream carries one Observation in and one Decision out per decision. Converting
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

_OBS_TAG, _AVAIL_TAG, _EPISODE_ID_TAG = 0x0A, 0x12, 0x1A  # fields 1, 2, 3 with wire type 2 (length-delimited)


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
    obs_O = np.empty(0, np.float32)
    avail_A = np.empty(0, bool)
    episode_id = ""
    seen = set()
    pos, end = 0, len(data)
    try:
        while pos < end:
            tag = data[pos]
            if tag not in (_OBS_TAG, _AVAIL_TAG, _EPISODE_ID_TAG) or tag in seen:
                return None
            seen.add(tag)
            n, pos = _varint(data, pos + 1)
            if pos + n > end:
                return None
            if tag == _OBS_TAG:
                if n % 4:
                    return None
                obs_O = np.frombuffer(data, "<f4", n // 4, pos).astype(np.float32, copy=False)
            elif tag == _AVAIL_TAG:
                raw = np.frombuffer(data, np.uint8, n, pos)
                if (raw > 1).any():  # multi-byte bool varints: legal but not canonical
                    return None
                avail_A = raw.astype(bool)
            else:
                episode_id = data[pos: pos + n].decode("utf-8")
            pos += n
    except (IndexError, ValueError, UnicodeDecodeError):
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
