"""Evaluation statistics: Wilson and Student-t confidence intervals, percentiles, an episode summary.

Pure NumPy (no SciPy: the serving image carries only the base dependencies). The Student-t
quantile comes from an exact table for small samples and the Cornish-Fisher expansion beyond.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1..30 (standard tables).
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
_Z975 = 1.959963984540054


def _normal_quantile(p: float) -> float:
    """Inverse standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9 after one Newton step)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability {p} outside (0, 1)")
    a = (-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.3577518672690,
         -30.66479806614716, 2.506628277459239)
    b = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572)
    c = (-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734,
         4.374664141464968, 2.938163982698783)
    d = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    elif p > 1 - lo:
        q = math.sqrt(-2 * math.log(1 - p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    else:
        q = p - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (
            ((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    # One Newton step on the exact CDF.
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
    x -= e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return x


def t_quantile_975(df: int) -> float:
    """``t_{0.975}`` with ``df`` degrees of freedom (table for df <= 30, Cornish-Fisher beyond, error < 1e-4)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; ``(0, 1)`` when ``n == 0``."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = _normal_quantile(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_t_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean with its two-sided 95 % Student-t interval (NaNs when empty;
    a zero-width interval for one value, since no spread can be estimated from it)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    half = t_quantile_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def percentiles(values: Sequence[float] | np.ndarray, qs: Iterable[float] = (50, 99)) -> list[float]:
    """Percentiles (linear interpolation) of ``values``; NaNs when empty."""
    x = np.asarray(values, dtype=np.float64).ravel()
    qs = list(qs)
    if x.size == 0:
        return [math.nan] * len(qs)
    return [float(v) for v in np.percentile(x, qs)]


@dataclass
class EpisodeSummary:
    """Aggregate of many episodes, what ``run``, ``eval`` print and tests assert on."""

    episodes: int
    """Episodes that finished (terminated or truncated), aborted ones excluded."""
    aborted: int
    """Episodes aborted by the ``fail`` policy or an environment error."""
    degraded: int
    """Finished episodes in which at least one decision was a fallback."""
    wins: int
    """Finished episodes with ``won``."""
    time_outs: int
    """Finished episodes cut at the env's episode limit (truncated, not terminated) without a win: on SMAX/SMAC a
    battle that neither team won in time, on a fixed-length game (``predator_prey_qtran``) every episode."""
    win_rate: float
    win_rate_ci: tuple[float, float]
    """Wilson 95 % interval of the win rate."""
    mean_return: float
    return_ci: tuple[float, float]
    """Student-t 95 % interval of the mean return."""
    mean_length: float
    """Mean episode length in steps (joint actions)."""
    latency_ms: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Per agent index: decision latency (p50, p99) in milliseconds, over every answered decision."""
    fallbacks: dict[tuple[int, str], int] = field(default_factory=dict)
    """``(agent, reason) -> count`` of fallback decisions."""
    wall_seconds: float = 0.0
    """Wall-clock time of the whole evaluation."""

    def to_dict(self) -> dict:
        """JSON-ready (strict JSON: NaN, e.g. the win rate of zero episodes, becomes None)."""
        return _no_nan({
            "episodes": self.episodes,
            "aborted": self.aborted,
            "degraded": self.degraded,
            "wins": self.wins,
            "time_outs": self.time_outs,
            "win_rate": self.win_rate,
            "win_rate_ci": list(self.win_rate_ci),
            "mean_return": self.mean_return,
            "return_ci": list(self.return_ci),
            "mean_length": self.mean_length,
            "latency_ms": {str(k): {"p50": v[0], "p99": v[1]} for k, v in sorted(self.latency_ms.items())},
            "fallbacks": [{"agent": a, "reason": r, "count": c} for (a, r), c in sorted(self.fallbacks.items())],
            "wall_seconds": self.wall_seconds,
        })


def _no_nan(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_no_nan(v) for v in x]
    return x


def summarize(
    returns: Sequence[float],
    wons: Sequence[bool],
    lengths: Sequence[int],
    *,
    truncated: Sequence[bool] | None = None,
    aborted: int = 0,
    degraded: int = 0,
    latencies_ms: dict[int, Sequence[float]] | None = None,
    fallbacks: dict[tuple[int, str], int] | None = None,
    wall_seconds: float = 0.0,
) -> EpisodeSummary:
    """Build an ``EpisodeSummary`` from per-episode outcomes of the finished episodes (``truncated``: whether
    each ended at the episode limit; none did when not given)."""
    truncated = [False] * len(returns) if truncated is None else truncated
    if not len(returns) == len(wons) == len(lengths) == len(truncated):
        raise ValueError(f"returns/wons/lengths/truncated differ in length: "
                         f"{len(returns)}/{len(wons)}/{len(lengths)}/{len(truncated)}")
    n = len(returns)
    wins = int(sum(bool(w) for w in wons))
    mean, lo, hi = mean_t_interval(returns)
    lat: dict[int, tuple[float, float]] = {}
    for agent, values in sorted((latencies_ms or {}).items()):
        p50, p99 = percentiles(values, (50, 99))
        lat[agent] = (p50, p99)
    return EpisodeSummary(
        episodes=n,
        aborted=aborted,
        degraded=degraded,
        wins=wins,
        time_outs=int(sum(bool(t) and not bool(w) for t, w in zip(truncated, wons, strict=True))),
        win_rate=wins / n if n else math.nan,
        win_rate_ci=wilson_interval(wins, n),
        mean_return=mean,
        return_ci=(lo, hi),
        mean_length=float(np.mean(lengths)) if n else math.nan,
        latency_ms=lat,
        fallbacks=dict(fallbacks or {}),
        wall_seconds=wall_seconds,
    )


def summarize_records(records: Sequence[Any], wall_seconds: float = 0.0) -> EpisodeSummary:
    """The run summary over ``EpisodeRecord``s: finished episodes' outcomes, aborted count, latencies, fallbacks."""
    done = [r for r in records if not r.outcome.aborted]
    n_agents = records[0].n_agents if records else 0
    lat: dict[int, list[float]] = {i: [] for i in range(n_agents)}
    fallbacks: dict[tuple[int, str], int] = {}
    for r in records:
        for i in range(n_agents):
            col = r.latency_ms_TN[:, i]
            lat[i].extend(col[~np.isnan(col)].tolist())
        for f in r.fallbacks:
            fallbacks[(f.agent, f.reason)] = fallbacks.get((f.agent, f.reason), 0) + 1
    return summarize(
        [r.outcome.episode_return for r in done],
        [r.outcome.won for r in done],
        [r.outcome.length for r in done],
        truncated=[r.outcome.truncated and not r.outcome.terminated for r in done],
        aborted=len(records) - len(done),
        degraded=sum(r.outcome.degraded for r in done),
        latencies_ms=lat,
        fallbacks=fallbacks,
        wall_seconds=wall_seconds,
    )
