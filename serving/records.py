"""Episode records: one gzip-compressed JSON file per episode, versioned, written atomically.

A record holds what is needed to re-simulate the episode (env id, seed, the joint actions
actually applied) and what happened (rewards, outcome, per-agent decision latencies,
fallbacks, reconnects), optionally the observations and avail masks each agent decided on.
Layout (``zcat file | python -m json.tool`` reads it)::

    {"format": "marlctl.episode", "version": 1, "env_id": ..., "env_spec": {...}, "seed": ...,
     "episode_index": ..., "source": {...}, "created": ISO-8601,
     "actions": [[a_0 .. a_N-1] per step], "rewards": [r per step],
     "outcome": {"return", "won", "score", "length", "terminated", "truncated",
                 "degraded", "aborted", "error"},
     "latency_ms": [[ms or null per agent] per step], "fallbacks": [{"step", "agent", "reason", "action"}],
     "reconnects": [{"step", "agent"}], "obs": [[[...]]] | null, "avail": [[[...]]] | null}
"""
from __future__ import annotations

import gzip
import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from marlctl.agents.files import atomic_write_bytes
from marlctl.serving.errors import ServingError

RECORD_FORMAT = "marlctl.episode"
RECORD_VERSION = 1
RECORD_SUFFIX = ".episode.json.gz"

FALLBACK_REASONS = ("timeout", "unavailable", "stream_error", "invalid_decision", "spec_mismatch")
"""Why a decision was a fallback: no answer in time, agent not reachable, stream broke, answer unusable,
another service answered at the agent's address after a failure."""


class RecordError(ServingError):
    """An episode record that is missing, corrupt, of another format/version or from another env."""


@dataclass(frozen=True)
class Fallback:
    """One decision the runner made itself because an agent failed."""

    step: int
    """Step index (0-based) of the decision."""
    agent: int
    """Agent index."""
    reason: str
    """One of ``FALLBACK_REASONS``."""
    action: int
    """The action applied instead (from the failure policy); -1 under ``fail``: the episode was aborted."""


@dataclass
class Outcome:
    """How an episode ended."""

    episode_return: float
    """Sum of team rewards."""
    won: bool
    """The env's ``won`` at the last step (False where the env has no goal)."""
    score: float
    """The env's own outcome measure (``info["score"]`` at the last step)."""
    length: int
    """Number of joint actions applied."""
    terminated: bool
    truncated: bool
    degraded: bool
    """At least one decision was a fallback."""
    aborted: bool = False
    """The episode was stopped before its end (``fail`` policy or an error); ``error`` says why."""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "return": self.episode_return,
            "won": self.won,
            "score": self.score,
            "length": self.length,
            "terminated": self.terminated,
            "truncated": self.truncated,
            "degraded": self.degraded,
            "aborted": self.aborted,
            "error": self.error,
        }

    def __getitem__(self, key: str) -> Any:
        """Dict-style read of the on-disk field names (``outcome["return"]``), for scripts."""
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


@dataclass
class EpisodeRecord:
    """One recorded episode, in memory."""

    env_id: str
    env_spec: dict[str, Any]
    """``EnvSpec.to_dict()`` of the env the episode ran in."""
    seed: int
    episode_index: int
    actions_TN: np.ndarray  # [T, N] int64, the joint actions applied
    rewards_T: np.ndarray  # [T] float64
    outcome: Outcome
    latency_ms_TN: np.ndarray  # [T, N] float64, NaN where the decision was a fallback
    fallbacks: list[Fallback] = field(default_factory=list)
    reconnects: list[tuple[int, int]] = field(default_factory=list)
    """``(step, agent)``: a new stream was opened for the agent at that step (its recurrent state restarted)."""
    source: dict[str, Any] = field(default_factory=dict)
    """Who decided: ``{"kind": "run" | "eval", "agents": [address or model file per agent], ...}``."""
    obs_TNO: np.ndarray | None = None  # [T, N, O] float32 observations decided on (optional)
    avail_TNA: np.ndarray | None = None  # [T, N, A] bool avail masks decided on (optional)
    created: str = ""

    @property
    def n_agents(self) -> int:
        return int(self.env_spec["n_agents"])

    def to_dict(self) -> dict[str, Any]:
        lat = [[None if math.isnan(v) else round(float(v), 4) for v in row] for row in self.latency_ms_TN]
        return {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            "env_id": self.env_id,
            "env_spec": self.env_spec,
            "seed": int(self.seed),
            "episode_index": int(self.episode_index),
            "source": self.source,
            "created": self.created or datetime.now(UTC).isoformat(timespec="seconds"),
            "actions": self.actions_TN.astype(np.int64).tolist(),
            "rewards": self.rewards_T.astype(np.float64).tolist(),
            "outcome": self.outcome.to_dict(),
            "latency_ms": lat,
            "fallbacks": [asdict(f) for f in self.fallbacks],
            "reconnects": [{"step": s, "agent": a} for s, a in self.reconnects],
            "obs": None if self.obs_TNO is None else self.obs_TNO.astype(np.float32).tolist(),
            "avail": None if self.avail_TNA is None else self.avail_TNA.astype(bool).tolist(),
        }


def record_filename(episode_index: int, seed: int) -> str:
    return f"episode_{episode_index:06d}_seed{seed}{RECORD_SUFFIX}"


def save_record(record: EpisodeRecord, directory: str | Path) -> Path:
    """Write ``record`` into ``directory`` (created if needed) atomically; returns the file path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / record_filename(record.episode_index, record.seed)
    payload = json.dumps(record.to_dict(), separators=(",", ":"), allow_nan=False).encode()
    atomic_write_bytes(path, gzip.compress(payload, mtime=0))
    return path


def _require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise RecordError(f"{path}: not a valid marlctl episode record: {what}")


def _matrix(rows: Any, n: int, dtype: type) -> np.ndarray:
    """``rows`` as a ``[T, n]`` array (``[0, n]`` when empty); the shape is checked by the caller."""
    arr = np.asarray(rows, dtype=dtype)
    return arr.reshape(0, n) if arr.size == 0 else arr


def load_record(path: str | Path, expect_env: str | None = None) -> EpisodeRecord:
    """Read and validate a record; ``RecordError`` for a missing/corrupt/foreign file or another env."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: episode record not found (records are *{RECORD_SUFFIX} files)")
    try:
        with gzip.open(path, "rb") as gz:
            doc = json.loads(gz.read())
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(
            f"{path}: not a valid marlctl episode record (expected gzip-compressed JSON): {exc}"
        ) from None
    _require(isinstance(doc, dict), path, "top level is not a JSON object")
    fmt, version = doc.get("format"), doc.get("version")
    _require(fmt == RECORD_FORMAT, path, f"format is {fmt!r}, expected {RECORD_FORMAT!r}")
    if version != RECORD_VERSION:
        raise RecordError(f"{path}: episode record version {version!r} is not supported (this marlctl reads "
                          f"version {RECORD_VERSION})")
    for key in ("env_id", "env_spec", "seed", "episode_index", "actions", "rewards", "outcome", "latency_ms",
                "fallbacks", "reconnects"):
        _require(key in doc, path, f"missing field {key!r}")
    env_id = doc["env_id"]
    _require(isinstance(env_id, str), path, "env_id is not a string")
    if expect_env is not None and env_id != expect_env:
        raise RecordError(f"{path}: the record is from env {env_id!r}, not {expect_env!r}")
    spec = doc["env_spec"]
    _require(isinstance(spec, dict) and all(isinstance(spec.get(k), int) for k in
                                            ("n_agents", "n_actions", "obs_dim")), path, "bad env_spec")
    n, a = spec["n_agents"], spec["n_actions"]
    try:
        actions = _matrix(doc["actions"], n, np.int64)  # [T, N]
        rewards = np.asarray(doc["rewards"], dtype=np.float64)  # [T]
        lat = _matrix([[math.nan if v is None else v for v in row] for row in doc["latency_ms"]],
                      n, np.float64)  # [T, N]
        o = doc["outcome"]
        outcome = Outcome(
            episode_return=float(o["return"]), won=bool(o["won"]), score=float(o["score"]),
            length=int(o["length"]), terminated=bool(o["terminated"]), truncated=bool(o["truncated"]),
            degraded=bool(o["degraded"]), aborted=bool(o.get("aborted", False)), error=o.get("error"),
        )
        fallbacks = [Fallback(int(f["step"]), int(f["agent"]), str(f["reason"]), int(f["action"]))
                     for f in doc["fallbacks"]]
        reconnects = [(int(r["step"]), int(r["agent"])) for r in doc["reconnects"]]
        obs = None if doc.get("obs") is None else np.asarray(doc["obs"], dtype=np.float32)
        avail = None if doc.get("avail") is None else np.asarray(doc["avail"], dtype=bool)
    except (TypeError, ValueError, KeyError) as exc:
        raise RecordError(f"{path}: not a valid marlctl episode record: {type(exc).__name__}: {exc}") from None
    t = len(actions)
    _require(actions.ndim == 2 and actions.shape[1] == n, path, f"actions are not [T, {n}]")
    _require(lat.ndim == 2 and lat.shape[1] == n, path, f"latency_ms is not [T, {n}]")
    _require(rewards.ndim == 1, path, "rewards is not a list of numbers")
    _require(len(rewards) == t and len(lat) == t, path, "actions, rewards and latency_ms differ in length")
    _require(outcome.length == t, path, f"outcome.length {outcome.length} != {t} recorded steps")
    _require(bool(((actions >= 0) & (actions < a)).all()), path, f"an action outside [0, {a})")
    last = t if outcome.aborted else t - 1  # an aborted episode's failing step applied no action
    _require(all(0 <= f.step <= last and 0 <= f.agent < n and (f.action >= 0 or outcome.aborted)
                 for f in fallbacks), path, "a fallback outside the episode")
    _require(obs is None or obs.shape == (t, n, spec["obs_dim"]), path, "obs shape does not match")
    _require(avail is None or avail.shape == (t, n, a), path, "avail shape does not match")
    return EpisodeRecord(
        env_id=env_id, env_spec=spec, seed=int(doc["seed"]), episode_index=int(doc["episode_index"]),
        actions_TN=actions, rewards_T=rewards, outcome=outcome, latency_ms_TN=lat, fallbacks=fallbacks,
        reconnects=reconnects, source=dict(doc.get("source") or {}), obs_TNO=obs, avail_TNA=avail,
        created=str(doc.get("created", "")),
    )


def find_records(paths: list[str | Path]) -> list[Path]:
    """Expand directories into their record files (sorted); files are kept as given."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.glob(f"*{RECORD_SUFFIX}") if not f.name.startswith("."))  # skip temp files
            if not found:
                raise RecordError(f"{p}: no episode records (*{RECORD_SUFFIX}) in this directory")
            out.extend(found)
        else:
            out.append(p)
    return out
