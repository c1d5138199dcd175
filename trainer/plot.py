"""Learning curves from run directories: return and win rate vs env steps, seeds aggregated (mean + band), PNG."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from marlctl.agents.files import atomic_path
from marlctl.trainer.errors import ConfigValueError, RunDirError, TrainerError

SOURCES = ("eval", "train")


@dataclass
class Curve:
    """One run's points of one source (``eval`` or ``train``)."""

    run_dir: Path
    algo: str
    env_id: str
    seed: int
    steps: np.ndarray  # [K] env steps
    values: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> [K] (NaN where absent)


@dataclass
class PlotResult:
    """What ``plot_runs`` drew (one line of text per group, for the CLI)."""

    out: Path
    lines: list[str]


def read_curve(run_dir: str | Path, source: str = "eval") -> Curve:
    """The ``source`` points of a run's ``log.jsonl``; after a resume, points beyond the resumed step are dropped."""
    if source not in SOURCES:
        raise ConfigValueError(f"plot source {source!r}; valid: {', '.join(SOURCES)}")
    run_dir = Path(run_dir)
    log, cfg_path = run_dir / "log.jsonl", run_dir / "config.json"
    if not log.is_file() or not cfg_path.is_file():
        raise RunDirError(f"{run_dir} is not a marlctl run directory (needs config.json and log.jsonl)")
    cfg = json.loads(cfg_path.read_text())
    points: dict[int, dict[str, float]] = {}
    for n, line in enumerate(log.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise RunDirError(f"{log}:{n} is not valid JSON") from None
        step = int(rec.get("env_steps", 0))
        if rec.get("event") == "resume":
            points = {s: v for s, v in points.items() if s <= step}
        elif rec.get("event") == source:
            points[step] = {k: float(v) for k, v in rec.items() if k.startswith(f"{source}/")}
    steps = np.array(sorted(points), dtype=np.int64)
    keys = (f"{source}/return", f"{source}/win_rate")
    values = {k: np.array([points[s].get(k, np.nan) for s in steps], dtype=np.float64) for k in keys}
    return Curve(run_dir, cfg["run"]["algo"], cfg["env"]["env_id"], int(cfg["run"]["seed"]), steps, values)


def aggregate(curves: list[Curve], key: str, n_grid: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                          np.ndarray]:
    """Seeds on a common env-step grid (their overlap): ``(grid, mean, low, high)`` with low/high = mean -/+ std."""
    usable = [c for c in curves if len(c.steps) and np.isfinite(c.values[key]).any()]
    if not usable:
        return (np.zeros(0),) * 4  # type: ignore[return-value]
    lo = max(int(c.steps[np.isfinite(c.values[key])].min()) for c in usable)
    hi = min(int(c.steps[np.isfinite(c.values[key])].max()) for c in usable)
    if hi < lo:  # no overlap: fall back to the longest run
        usable = [max(usable, key=lambda c: c.steps.max())]
        lo, hi = int(usable[0].steps.min()), int(usable[0].steps.max())
    grid = np.linspace(lo, hi, n_grid) if hi > lo else np.array([float(lo)])
    ys = []
    for c in usable:
        ok = np.isfinite(c.values[key])
        ys.append(np.interp(grid, c.steps[ok], c.values[key][ok]))
    y_SG = np.stack(ys)  # [seeds, grid]
    mean, std = y_SG.mean(axis=0), y_SG.std(axis=0)
    return grid, mean, mean - std, mean + std


def _png(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigValueError(f"--out {out}: expected a .png file")
    return out


def plot_runs(run_dirs: list[str | Path], out: str | Path, source: str = "eval", title: str | None = None) -> PlotResult:
    """Draw return and win rate vs env steps of ``run_dirs`` (grouped by algo and env) to a PNG at ``out``."""
    _png(out)
    if not run_dirs:
        raise ConfigValueError("give at least one run directory")
    return plot_curves([read_curve(d, source) for d in run_dirs], out, source=source, title=title)


def plot_curves(curves: list[Curve], out: str | Path, source: str = "eval", title: str | None = None) -> PlotResult:
    """Draw ``curves`` (from run dirs, or rebuilt from a report's rows) grouped by algo and env to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = _png(out)
    groups: dict[tuple[str, str], list[Curve]] = {}
    for c in curves:
        groups.setdefault((c.algo, c.env_id), []).append(c)
    keys = (f"{source}/return", f"{source}/win_rate")
    has_win = any(np.isfinite(c.values[keys[1]]).any() for c in curves)
    n_panels = 2 if has_win else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, 4.2), squeeze=False)
    lines, drawn = [], 0
    for (algo, env_id), members in groups.items():
        label = f"{algo} ({env_id}, {len(members)} seed{'s' if len(members) > 1 else ''})"
        finals = []
        for ax, key in zip(axes[0], keys[:n_panels], strict=True):
            grid, mean, low, high = aggregate(members, key)
            if len(grid) == 0:
                continue
            ax.plot(grid, mean, label=label)
            if len(members) > 1:
                ax.fill_between(grid, low, high, alpha=0.2)
            finals.append(f"{key.split('/')[1]} {mean[-1]:.3g}")
            drawn += 1
        lines.append(f"{label}: final {', '.join(finals) or 'no points'}")
    if drawn == 0:
        plt.close(fig)
        raise TrainerError(f"no {source} points in {', '.join(str(c.run_dir) for c in curves)}: the runs logged no "
                           f"{source} events yet (try --source {'train' if source == 'eval' else 'eval'})")
    for ax, key in zip(axes[0], keys[:n_panels], strict=True):
        ax.set_xlabel("env steps")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title or f"{source} curves")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
    return PlotResult(out, lines)
