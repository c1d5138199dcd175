"""The one check of decision rows, before and after inference: every RPC's rows pass through here.

Before: each row's observation must be finite and (``--obs-guard``) within the range the model was
exported for, widened by a margin; its avail mask must allow at least one action. After: the
model's scores and next hidden state must be finite and the action available; a row that fails is
refused (INVALID_ARGUMENT) and its episode state is not advanced, so a decision is never an
unavailable action and a NaN never poisons an episode's later decisions. ``Decide`` and ``Episode``
call it with one row, ``Episodes`` with a message's rows; the messages are the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

OBS_GUARDS = ("off", "clip", "refuse")
C = grpc.StatusCode


class RequestError(Exception):
    """A request the server refuses: carries the gRPC status code and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ObsGuard:
    """Observation bounds per feature: the exported range ``[low, high]`` widened by ``margin`` times
    ``max(high - low, 1)`` on each side (an observation that far out is not one the policy was made for)."""

    mode: str
    """``off``, ``clip`` (clip to the bounds) or ``refuse`` (INVALID_ARGUMENT)."""
    low_O: np.ndarray
    high_O: np.ndarray
    margin: float

    @classmethod
    def build(cls, mode: str, margin: float, obs_low: np.ndarray | None, obs_high: np.ndarray | None
              ) -> ObsGuard | None:
        """None when the guard is off or the model carries no range (exported before ranges were recorded)."""
        if mode == "off" or obs_low is None or obs_high is None:
            return None
        width_O = np.maximum(obs_high - obs_low, 1.0) * margin
        return cls(mode, (obs_low - width_O).astype(np.float32), (obs_high + width_O).astype(np.float32), margin)


@dataclass
class Refusal:
    """Rows refused for one reason: ``rows_R`` (bool), the status code, and why (worded for the first such row)."""

    rows_R: np.ndarray
    code: grpc.StatusCode
    why: str


class RowValidator:
    """Checks rows of one agent model (see the module docstring)."""

    def __init__(self, obs_dim: int, n_actions: int, guard: ObsGuard | None) -> None:
        self.obs_dim = obs_dim
        self.n_actions = n_actions
        self.guard = guard

    def check_lengths(self, n_obs: int, n_avail: int) -> None:
        """One row's field lengths (a request whose lengths are wrong is refused whole)."""
        if n_obs != self.obs_dim:
            raise RequestError(C.INVALID_ARGUMENT, f"obs has {n_obs} values, expected obs_dim={self.obs_dim}")
        if n_avail != self.n_actions:
            raise RequestError(C.INVALID_ARGUMENT,
                               f"avail_actions has {n_avail} values, expected n_actions={self.n_actions}")

    def before(self, obs_RO: np.ndarray, avail_RA: np.ndarray) -> tuple[np.ndarray, list[Refusal]]:
        """``(obs to decide on [R, O] (clipped under --obs-guard clip), refusals)``; no refusals = every row is fine."""
        g = self.guard
        # fast path, a few whole-array reductions (inside the guard's finite bounds implies finite: NaN compares
        # false); any doubt takes the per-row path below
        if avail_RA.any(1).all():
            if g is None:
                if np.isfinite(obs_RO).all():
                    return obs_RO, []
            elif (obs_RO >= g.low_O).all() and (obs_RO <= g.high_O).all():
                return obs_RO, []
        finite_R = np.isfinite(obs_RO).all(1)
        any_R = avail_RA.any(1)
        inside_R = None
        if g is not None:
            inside_R = ((obs_RO >= g.low_O) & (obs_RO <= g.high_O)).all(1)
            if g.mode == "clip":
                if not inside_R.all():
                    obs_RO = np.clip(obs_RO, g.low_O, g.high_O)
                inside_R = None
        if finite_R.all() and any_R.all() and (inside_R is None or inside_R.all()):
            return obs_RO, []
        out = []
        if not finite_R.all():
            r = int(np.argmin(finite_R))
            bad = np.flatnonzero(~np.isfinite(obs_RO[r]))
            out.append(Refusal(~finite_R, C.INVALID_ARGUMENT,
                               f"obs has NaN/Inf at index {bad[:5].tolist()}; observations must be finite"))
        if inside_R is not None and not inside_R.all():
            rows_R = ~inside_R & finite_R
            if rows_R.any():
                r = int(np.argmax(rows_R))
                o = obs_RO[r]
                j = int(np.argmax((o < g.low_O) | (o > g.high_O)))  # type: ignore[union-attr]
                out.append(Refusal(rows_R, C.INVALID_ARGUMENT,
                                   f"obs[{j}] = {float(o[j]):.4g} is outside what the model handles "
                                   f"([{float(g.low_O[j]):.4g}, {float(g.high_O[j]):.4g}]: its exported range "  # type: ignore[union-attr]
                                   f"widened by {g.margin:g}x; serve --obs-guard/--obs-margin)"))  # type: ignore[union-attr]
        if not any_R.all():
            out.append(Refusal(~any_R, C.INVALID_ARGUMENT,
                               "avail_actions is all false: at least one action must be available"))
        return obs_RO, out

    @staticmethod
    def after(action_R: np.ndarray, scores_RA: np.ndarray, hidden_RH: np.ndarray, avail_RA: np.ndarray
              ) -> Refusal | None:
        """Refuse rows whose outputs are unusable: non-finite scores or hidden state, or an unavailable action."""
        finite = np.isfinite(scores_RA).all() and np.isfinite(hidden_RH).all()
        if action_R.shape[0] == 1:  # the single-row paths: scalar checks
            a = int(action_R[0])
            if finite and 0 <= a < avail_RA.shape[1] and avail_RA[0, a]:
                return None
        elif finite and (action_R >= 0).all() and (action_R < avail_RA.shape[1]).all() \
                and avail_RA[np.arange(action_R.shape[0]), action_R].all():
            return None
        ok_R = np.isfinite(scores_RA).all(1) & np.isfinite(hidden_RH).all(1)
        in_range_R = (action_R >= 0) & (action_R < avail_RA.shape[1])
        ok_R &= in_range_R
        ok_R[in_range_R] &= avail_RA[np.flatnonzero(in_range_R), action_R[in_range_R]]
        if ok_R.all():
            return None
        return Refusal(~ok_R, C.INVALID_ARGUMENT,
                       "the model's scores for this observation are not finite: the observation is outside what "
                       "the model handles; the episode's state was not advanced")

    def check_one(self, obs_O: np.ndarray, avail_A: np.ndarray) -> np.ndarray:
        """The single-row form of ``before``: the obs to decide on, or ``RequestError`` with the first refusal."""
        self.check_lengths(obs_O.shape[0], avail_A.shape[0])
        obs_1O, refusals = self.before(obs_O[None], avail_A[None])
        if refusals:
            raise RequestError(refusals[0].code, refusals[0].why)
        return obs_1O[0]
