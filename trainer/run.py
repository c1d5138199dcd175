"""The shared training loop for ANY ``Algorithm``: run dir, logs, evaluation, checkpoints, resume, summary.

A run directory holds ``config.json`` (the resolved ``TrainConfig``), ``log.jsonl`` (one JSON object
per event: ``start``/``resume``/``warning``/``train``/``eval``/``checkpoint``/``end``), TensorBoard
events under ``tb/`` and ``checkpoints/step_<env_steps>.pt`` + ``checkpoints/latest.pt`` (written
atomically; format in ``agents/bundle.py``; the last ``run.keep_checkpoints`` step files are kept) plus, for
value methods, one replay snapshot ``checkpoints/replay_<env_steps>.npz`` named by ``latest.pt``. ``resume_run`` validates the checkpoint against the
run's config and env before touching anything, then continues with the saved optimizer, buffer,
schedules and torch/NumPy/Python RNG states.
"""
from __future__ import annotations

import io
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from marlctl.agents.bundle import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, read_checkpoint
from marlctl.agents.errors import ModelError
from marlctl.agents.files import atomic_write_bytes, atomic_write_json
from marlctl.envs.base import EnvSpec
from marlctl.trainer.algorithm import Algorithm
from marlctl.trainer.config import (
    SOURCES_FILE,
    ConfigLayer,
    TrainConfig,
    check_against_env,
    explain_config,
    from_sections,
    sources_record,
)
from marlctl.trainer.errors import CheckpointError, ConfigValueError, RunDirError
from marlctl.trainer.registry import algorithm_spec
from marlctl.trainer.replay import ReplayBuffer
from marlctl.trainer.trackers import RunLogger, TrackerOptions
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# ------------------------------------------------------------------ files


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError("device=cuda but PyTorch sees no CUDA device; valid here: auto, cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigValueError(f"device={name!r}; valid: auto, cpu, cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """torch / NumPy-global / Python RNG states as ``weights_only``-loadable containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


# ------------------------------------------------------------------ logging (the trackers: trainer/trackers.py)


class MetricAccumulator:
    """Means of per-iteration metrics between two log lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return out


# ------------------------------------------------------------------ the run


@dataclass
class RunState:
    """The loop's own counters (checkpointed under ``"run"``)."""

    env_steps: int = 0
    episodes: int = 0
    updates: int = 0
    iterations: int = 0
    next_log: int = 0
    next_eval: int = 0
    next_save: int = 0
    wall_s: float = 0.0


@dataclass
class RunSummary:
    """The end-of-run figures (also the ``end`` event of ``log.jsonl``)."""

    run_dir: str
    algo: str
    env_id: str
    env_steps: int
    episodes: int
    updates: int
    wall_s: float
    env_steps_per_s: float
    updates_per_s: float
    checkpoint: str
    last_train: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class TrainingRun:
    """Drives one ``Algorithm`` to ``cfg.run.steps`` env steps inside ``run_dir``."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, spec: EnvSpec, console: Console) -> None:
        self.cfg, self.run_dir, self.spec, self.console = cfg, run_dir, spec, console
        self.device = resolve_device(cfg.run.device)
        if cfg.run.torch_threads > 0:
            torch.set_num_threads(cfg.run.torch_threads)
        seed_everything(cfg.run.seed)
        self.notes: list[tuple[str, dict[str, Any]]] = []  # events of components, written with the next log line
        self.observers: list[Any] = []  # on_iteration(run, stats) / on_eval(run): e.g. train_metrics.TrainMetrics
        if cfg.ray.enabled:  # collection and evaluation on Ray workers; this process stays the learner
            from marlctl.trainer.distributed.algorithm import DistributedAlgorithm

            self.algo: Algorithm = DistributedAlgorithm(cfg, spec, self.device, log=self.note)
        else:
            self.algo = algorithm_spec(cfg.run.algo).build(cfg, spec, self.device)
        self.state = RunState(next_log=cfg.run.log_interval, next_eval=cfg.run.eval_interval or cfg.run.steps,
                              next_save=cfg.run.save_interval)
        self.warnings: list[str] = []
        self.last_train: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.last_checkpoint = ""

    def note(self, event: str, **fields: Any) -> None:
        """An event of a component (a worker started, failed, restarted) for ``log.jsonl``."""
        self.notes.append((event, fields))

    def _write_notes(self, logger: RunLogger) -> None:
        for event, fields in self.notes:
            logger.event(event, self.state.env_steps, **fields)
        self.notes.clear()

    # -------------------------------------------------------- checkpoints

    def checkpoint_dict(self, replay: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything but the replay buffer; ``replay`` names the buffer's snapshot file of the same step."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "algo": self.cfg.run.algo,
            "env_id": self.cfg.env.env_id,
            "env_spec": self.spec.to_dict(),
            "env_steps": self.state.env_steps,
            "seed": self.cfg.run.seed,
            "agent": self.algo.agent_bundle(),
            "algorithm": self.algo.state_dict(),
            "run": {**vars(self.state), "rng": rng_state()},
            "config": self.cfg.to_dict(),
            "replay": replay,
        }

    def _replay_buffer(self) -> ReplayBuffer | None:
        get = getattr(self.algo, "replay_buffer", None)  # value methods; policy methods keep no buffer
        return get() if callable(get) else None

    def save_checkpoint(self) -> Path:
        """Write ``step_<n>.pt`` and ``latest.pt`` (networks, optimizers, RNG, counters: a few MB) and, for a value
        method, ONE replay snapshot ``replay_<n>.npz`` that ``latest.pt`` names. Order: the snapshot first, then the
        checkpoints, then older snapshots are removed, so a kill at any moment leaves a ``latest.pt`` whose snapshot
        exists (at most one snapshot remains once a save completes)."""
        ckpt_dir = self.run_dir / "checkpoints"
        replay, buffer = None, self._replay_buffer()
        if buffer is not None:
            name = f"replay_{self.state.env_steps}.npz"
            size = buffer.save_arrays(ckpt_dir / name)
            replay = {"file": name, "episodes": buffer.size, "episodes_added": buffer.episodes_added, "bytes": size}
        buf = io.BytesIO()
        torch.save(self.checkpoint_dict(replay), buf)
        data = buf.getvalue()
        step_path = ckpt_dir / f"step_{self.state.env_steps}.pt"
        atomic_write_bytes(step_path, data)
        atomic_write_bytes(ckpt_dir / "latest.pt", data)
        for old in ckpt_dir.glob("replay_*.npz"):
            if replay is None or old.name != replay["file"]:
                old.unlink(missing_ok=True)
        keep = self.cfg.run.keep_checkpoints
        if keep > 0:
            steps = sorted(ckpt_dir.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
            for old in steps[:-keep]:
                old.unlink(missing_ok=True)
        self.last_checkpoint = str(step_path)
        return step_path

    def restore(self, ckpt: dict[str, Any], where: str) -> None:
        replay, buffer = ckpt.get("replay"), self._replay_buffer()
        snapshot = self.run_dir / "checkpoints" / str(replay["file"]) if replay else None
        if snapshot is not None and buffer is not None and not snapshot.is_file():
            raise CheckpointError(f"{where} names the replay snapshot {snapshot.name}, which is missing from "
                                  f"{snapshot.parent}; restore it, or start a new run (nothing was changed)")
        try:
            self.algo.load_state_dict(ckpt["algorithm"])
            if snapshot is not None and buffer is not None:
                buffer.load_arrays(snapshot)
                if buffer.episodes_added != int(replay["episodes_added"]):
                    raise ValueError(f"replay snapshot {snapshot.name} is not the one {where} was saved with")
            run = dict(ckpt["run"])
            rng = run.pop("rng")
            self.state = RunState(**run)
            set_rng_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{where} does not match this run's algorithm/config and cannot be resumed: "
                                  f"{first}") from None

    # -------------------------------------------------------- loop

    def loop_to_end(self) -> RunSummary:
        """``loop`` with its own JSONL/TensorBoard logger in ``run_dir`` (closed afterwards); the run itself stays
        open, so its algorithm can still be inspected (benches, tests) before ``close()``."""
        logger = RunLogger(self.run_dir)
        try:
            return self.loop(logger)
        finally:
            logger.close()

    def loop(self, logger: RunLogger) -> RunSummary:
        cfg, st = self.cfg.run, self.state
        acc = MetricAccumulator()
        t_log, steps_log, updates_log = time.perf_counter(), st.env_steps, st.updates
        t_start, wall0 = time.perf_counter(), st.wall_s
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=self.console, disable=not cfg.progress, transient=False,
        )
        with progress:
            task = progress.add_task(f"{cfg.algo} {self.cfg.env.env_id}", total=cfg.steps, completed=st.env_steps,
                                     info="")
            while st.env_steps < cfg.steps:
                stats = self.algo.train_iteration()
                st.env_steps += stats.env_steps
                st.episodes += stats.episodes
                st.updates += stats.updates
                st.iterations += 1
                acc.add(stats.metrics)
                self._write_notes(logger)
                for observer in self.observers:
                    observer.on_iteration(self, stats)
                if st.env_steps >= st.next_log or st.env_steps >= cfg.steps:
                    now = time.perf_counter()
                    dt = max(now - t_log, 1e-9)
                    scalars = acc.pop()
                    scalars["train/env_steps_per_s"] = (st.env_steps - steps_log) / dt
                    scalars["train/updates_per_s"] = (st.updates - updates_log) / dt
                    scalars["train/episodes"] = float(st.episodes)
                    scalars["train/updates"] = float(st.updates)
                    scalars.update(self._fault_totals())
                    logger.event("train", st.env_steps, scalars)
                    self.last_train = scalars
                    t_log, steps_log, updates_log = now, st.env_steps, st.updates
                    while st.next_log <= st.env_steps:
                        st.next_log += max(cfg.log_interval, 1)
                if cfg.eval_interval > 0 and st.env_steps >= st.next_eval and st.env_steps < cfg.steps:
                    self.run_eval(logger)
                    while st.next_eval <= st.env_steps:
                        st.next_eval += cfg.eval_interval
                st.wall_s = wall0 + time.perf_counter() - t_start
                if cfg.save_interval > 0 and st.env_steps >= st.next_save and st.env_steps < cfg.steps:
                    while st.next_save <= st.env_steps:
                        st.next_save += cfg.save_interval
                    path = self.save_checkpoint()
                    logger.event("checkpoint", st.env_steps, path=str(path))
                progress.update(task, completed=min(st.env_steps, cfg.steps), info=self._info())
            settle = getattr(self.algo, "settle", None)  # Ray workers: tasks still in flight end or fail first
            if callable(settle):
                settle()
            self.run_eval(logger)
            if cfg.eval_interval > 0:  # the final eval stands in for a periodic one due now (same as resumed)
                while st.next_eval <= st.env_steps:
                    st.next_eval += cfg.eval_interval
            progress.update(task, info=self._info())
        st.wall_s = wall0 + time.perf_counter() - t_start
        path = self.save_checkpoint()
        logger.event("checkpoint", st.env_steps, path=str(path))
        wall = max(st.wall_s, 1e-9)
        summary = RunSummary(
            run_dir=str(self.run_dir), algo=cfg.algo, env_id=self.cfg.env.env_id, env_steps=st.env_steps,
            episodes=st.episodes, updates=st.updates, wall_s=st.wall_s, env_steps_per_s=st.env_steps / wall,
            updates_per_s=st.updates / wall, checkpoint=str(path), last_train=self.last_train,
            last_eval=self.last_eval, warnings=self.warnings,
        )
        end = {k: v for k, v in vars(summary).items() if isinstance(v, int | float)}
        logger.event("end", st.env_steps, {**end, **self._fault_totals()})  # totals after the last tasks settled
        return summary

    def _fault_totals(self) -> dict[str, float]:
        """Ray workers' running totals (restarts, dropped episodes; not averaged); none on one process."""
        totals = getattr(self.algo, "fault_metrics", None)
        return totals() if callable(totals) else {}

    def run_eval(self, logger: RunLogger) -> None:
        self.last_eval = self.algo.evaluate(self.cfg.run.eval_episodes)
        self._write_notes(logger)  # what the components noted meanwhile (a worker lost at the end of the run)
        logger.event("eval", self.state.env_steps, self.last_eval)
        for observer in self.observers:
            observer.on_eval(self)

    def _info(self) -> str:
        parts = []
        for key, label in (("train/return", "ret"), ("train/win_rate", "win"), ("eval/return", "eval ret"),
                           ("eval/win_rate", "eval win")):
            src = self.last_eval if key.startswith("eval") else self.last_train
            if key in src:
                parts.append(f"{label} {src[key]:.3g}")
        progress_info = getattr(self.algo, "progress_info", None)  # workers alive, env-steps/s per worker
        if callable(progress_info):
            parts.append(progress_info())
        return "  ".join(parts)

    def close(self) -> None:
        close = getattr(self.algo, "close", None)
        if callable(close):
            close()


# ------------------------------------------------------------------ entry points


def _spec_of(env_id: str) -> EnvSpec:
    from marlctl.envs import env_spec

    return env_spec(env_id)


def _validate(cfg: TrainConfig, spec: EnvSpec) -> list[str]:
    """Config errors raise here (before anything is written); warnings are returned for the log."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return check_against_env(cfg, spec)


def _report_warnings(run: TrainingRun, logger: RunLogger, messages: list[str]) -> None:
    for message in messages:
        run.console.print(f"[yellow]warning:[/] {message}")
        logger.event("warning", run.state.env_steps, message=message)
    run.warnings = messages


def _observe(run: TrainingRun, metrics_port: int | None) -> Any:
    """The Prometheus exporter of ``--metrics-port`` (None without one); its ``close()`` stops it."""
    if metrics_port is None:
        return None
    from marlctl.trainer.train_metrics import TrainMetrics

    metrics = TrainMetrics.serve(metrics_port, run)
    run.observers.append(metrics)
    return metrics


def _drive(run: TrainingRun, logger: RunLogger, messages: list[str], metrics_port: int | None, event: str,
           **fields: Any) -> RunSummary:
    """Log the opening ``event`` and the warnings, serve metrics, loop to the end (closing the logger, the run and
    the exporter whatever happens), then print the summary."""
    metrics = None
    try:
        metrics = _observe(run, metrics_port)
        logger.event(event, run.state.env_steps, **fields)
        _report_warnings(run, logger, messages)
        summary = run.loop(logger)
    finally:
        logger.close()
        run.close()
        if metrics is not None:
            metrics.close()
    print_summary(summary, run.console)
    return summary


def train_run(cfg: TrainConfig, run_dir: str | Path, console: Console | None = None,
              metrics_port: int | None = None, trackers: TrackerOptions | None = None,
              layers: list[ConfigLayer] | None = None) -> RunSummary:
    """Start a new run in ``run_dir`` (which must not exist or be empty); ``metrics_port`` serves Prometheus metrics;
    ``trackers`` picks the experiment trackers (default: TensorBoard + JSONL); ``layers`` (those ``cfg`` was
    resolved from) are recorded in ``config_sources.json`` for ``marlctl config show RUN_DIR``."""
    console = console or Console()
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunDirError(f"{run_dir} already exists and is not empty: pass --resume {run_dir} to continue that "
                          "run, or choose a new --out directory")
    spec = _spec_of(cfg.env.env_id)
    messages = _validate(cfg, spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", cfg.to_dict())
    if layers is not None:
        atomic_write_json(run_dir / SOURCES_FILE, sources_record(explain_config(cfg, layers)))
    try:
        run = TrainingRun(cfg, run_dir, spec, console)
    except BaseException:  # e.g. an unreachable Ray cluster: leave no run dir that cannot be resumed
        (run_dir / "config.json").unlink(missing_ok=True)
        (run_dir / SOURCES_FILE).unlink(missing_ok=True)
        if not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    console.print(f"[bold]train[/] {cfg.run.algo} on {cfg.env.env_id} ({spec.n_agents} agents, {cfg.env.num_envs} envs)"
                  f" for {cfg.run.steps:,} env steps, seed {cfg.run.seed}, device {run.device} -> {run_dir}")
    logger = RunLogger(run_dir, trackers, cfg.to_dict())
    return _drive(run, logger, messages, metrics_port, "start", algo=cfg.run.algo, env_id=cfg.env.env_id,
                  seed=cfg.run.seed, device=str(run.device))


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config of an existing run directory (strict: unknown keys are errors)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a marlctl run directory: {path} is missing")
    try:
        sections = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path} is not valid JSON: {exc}") from None
    return from_sections(sections)


def resume_run(run_dir: str | Path, steps: int | None = None, console: Console | None = None,
               ray: Any = None, metrics_port: int | None = None) -> RunSummary:
    """Continue the run in ``run_dir`` from ``checkpoints/latest.pt`` up to ``steps`` (default: its budget);
    ``ray`` (a ``RayConfig``) replaces the run's ``[ray]`` section, e.g. another worker count.

    Refuses (``CheckpointError``, nothing written) a missing, corrupt or foreign checkpoint."""
    console = console or Console()
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if steps is not None:
        cfg = cfg.replace(run=type(cfg.run)(**{**vars(cfg.run), "steps": int(steps)}))
    if ray is not None:
        cfg = cfg.replace(ray=ray)
    try:
        ckpt, file, sha = read_checkpoint(run_dir)
    except ModelError as exc:
        raise CheckpointError(f"cannot resume {run_dir}: {exc}") from None
    spec = _spec_of(cfg.env.env_id)
    messages = _validate(cfg, spec)
    foreign = [f"{k}: checkpoint {ckpt.get(k)!r} vs run {want!r}" for k, want in
               (("algo", cfg.run.algo), ("env_id", cfg.env.env_id), ("seed", cfg.run.seed)) if ckpt.get(k) != want]
    if ckpt.get("env_spec") != spec.to_dict():
        foreign.append("env_spec differs from the environment's current spec")
    if foreign:
        raise CheckpointError(f"cannot resume {run_dir}: {file} belongs to another run ({'; '.join(foreign)})")
    run = TrainingRun(cfg, run_dir, spec, console)
    try:
        run.restore(ckpt, str(file))
    except CheckpointError:
        run.close()
        raise
    if steps is not None or ray is not None:
        atomic_write_json(run_dir / "config.json", cfg.to_dict())
    st = run.state
    console.print(f"[bold]resumed[/] {run_dir} from {file.name} (sha256 {sha[:12]}): {cfg.run.algo} on "
                  f"{cfg.env.env_id}, env step {st.env_steps:,} of {cfg.run.steps:,}, {st.episodes:,} episodes, "
                  f"{st.updates:,} updates")
    logger = RunLogger(run_dir, TrackerOptions.load(run_dir), cfg.to_dict())
    return _drive(run, logger, messages, metrics_port, "resume", checkpoint=str(file), sha256=sha,
                  steps=cfg.run.steps)


def print_summary(s: RunSummary, console: Console) -> None:
    """The end-of-run one-screen summary."""
    table = Table(title=f"marlctl train: {s.algo} on {s.env_id}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("env steps", f"{s.env_steps:,}")
    table.add_row("episodes / updates", f"{s.episodes:,} / {s.updates:,}")
    table.add_row("wall time", f"{s.wall_s:.1f} s")
    table.add_row("throughput", f"{s.env_steps_per_s:,.0f} env-steps/s, {s.updates_per_s:,.1f} updates/s")
    for key in ("train/return", "train/win_rate", "loss/td", "train/epsilon"):
        if key in s.last_train:
            table.add_row(key, f"{s.last_train[key]:.4g}")
    for key in ("eval/return", "eval/win_rate", "eval/episode_length"):
        if key in s.last_eval:
            table.add_row(key, f"{s.last_eval[key]:.4g}")
    for w in s.warnings:
        table.add_row("[yellow]warning[/]", w)
    table.add_row("run dir", s.run_dir)
    table.add_row("checkpoint", s.checkpoint)
    console.print(table)
