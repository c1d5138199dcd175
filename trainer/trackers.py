"""Experiment trackers of a training run: JSONL, TensorBoard, MLflow and W&B behind one interface.

``marlctl train --logger tensorboard,jsonl,mlflow,wandb`` picks any of them (default
``tensorboard,jsonl``, the run directory's ``log.jsonl`` and ``tb/``). Every tracker gets every event of
the run (``start``/``resume``/``warning``/``train``/``eval``/``checkpoint``/``end``) with its scalars at
the event's env step:

- ``jsonl``: one JSON object per event in ``log.jsonl`` (what ``marlctl plot`` and the benches read);
- ``tensorboard``: scalars under ``tb/``;
- ``mlflow``: the resolved config as params (``section.key``), scalars as metrics at step = env steps,
  and at the end the run directory as artifacts (not its replay snapshots); the store is ``--mlflow-uri`` (a path, or any MLflow
  tracking URI), by default the file store ``RUN/mlruns`` (MLflow 3 keeps its file store only when
  ``MLFLOW_ALLOW_FILE_STORE=true``, which is set for a file store unless the user set it);
- ``wandb``: the config and scalars to a W&B run in ``RUN/wandb``, offline unless W&B is configured
  (``WANDB_MODE``, ``WANDB_API_KEY`` or a ``wandb login``).

The selection and the MLflow / W&B run ids are kept in ``RUN/trackers.json``, so ``--resume`` continues
the same MLflow and W&B runs. A run closed before its ``end`` event is marked failed in MLflow and W&B.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from marlctl.agents.files import atomic_write_json
from marlctl.trainer.errors import ConfigValueError

TRACKERS: dict[str, str] = {
    "tensorboard": "tensorboard",
    "jsonl": "",
    "mlflow": "mlflow",
    "wandb": "wandb",
}
"""Tracker name -> the Python package it needs (empty: none beyond the base install)."""
DEFAULT_TRACKERS: tuple[str, ...] = ("tensorboard", "jsonl")
STATE_FILE = "trackers.json"
EXPERIMENT = "marlctl"


@dataclass(frozen=True)
class TrackerOptions:
    """Which trackers a run writes to (``--logger``) and where MLflow stores (``--mlflow-uri``)."""

    names: tuple[str, ...] = DEFAULT_TRACKERS
    """Tracker names, a subset of ``TRACKERS``, in the order given."""
    mlflow_uri: str = ""
    """MLflow tracking URI or path; empty = the file store ``RUN/mlruns``."""
    run_ids: dict[str, str] = field(default_factory=dict)
    """MLflow / W&B run ids of this run directory (filled when they are created; reused on resume)."""

    @classmethod
    def parse(cls, logger: str | None, mlflow_uri: str | None = None) -> TrackerOptions:
        """``--logger a,b`` and ``--mlflow-uri``, checked: names exist, packages installed, no stray URI."""
        names = DEFAULT_TRACKERS if logger is None else tuple(n.strip() for n in logger.split(",") if n.strip())
        valid = ", ".join(TRACKERS)
        if not names:
            raise ConfigValueError(f"--logger needs at least one tracker; valid: {valid}")
        for name in names:
            if name not in TRACKERS:
                raise ConfigValueError(f"unknown logger {name!r}; valid: {valid} (comma-separated)")
            package = TRACKERS[name]
            if package and importlib.util.find_spec(package) is None:
                raise ConfigValueError(f"logger {name!r} needs the Python package {package!r}, which is not installed: "
                                       f"pip install 'marlctl[{name}]'")
        if len(set(names)) != len(names):
            raise ConfigValueError(f"--logger {logger!r} names a tracker twice")
        if mlflow_uri and "mlflow" not in names:
            raise ConfigValueError("--mlflow-uri is only used with --logger ...,mlflow; add mlflow to --logger")
        return cls(names=names, mlflow_uri=mlflow_uri or "")

    def save(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / STATE_FILE, {"names": list(self.names), "mlflow_uri": self.mlflow_uri,
                                                 "run_ids": self.run_ids})

    @classmethod
    def load(cls, run_dir: Path) -> TrackerOptions:
        """The run directory's saved selection (a run from before trackers.json: the defaults)."""
        path = run_dir / STATE_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(names=tuple(data["names"]), mlflow_uri=str(data.get("mlflow_uri", "")),
                       run_ids={str(k): str(v) for k, v in dict(data.get("run_ids", {})).items()})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigValueError(f"{path} is not a valid tracker file ({exc}); fix or delete it") from None


class Tracker(Protocol):
    """One destination of a run's events."""

    def log(self, record: dict[str, Any], scalars: dict[str, float], env_steps: int) -> None:
        """``record`` is the whole event (as ``log.jsonl`` holds it); ``scalars`` its finite numbers."""

    def close(self, finished: bool) -> None:
        """``finished``: the run reached its ``end`` event."""


class JsonlTracker:
    def __init__(self, run_dir: Path) -> None:
        self.file = open(run_dir / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, record: dict[str, Any], scalars: dict[str, float], env_steps: int) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self, finished: bool) -> None:
        self.file.close()


class TensorBoardTracker:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def log(self, record: dict[str, Any], scalars: dict[str, float], env_steps: int) -> None:
        for k, v in scalars.items():
            self.tb.add_scalar(k, v, env_steps)

    def close(self, finished: bool) -> None:
        self.tb.close()


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """``{"optim": {"lr": 5e-4}}`` -> ``{"optim.lr": "0.0005"}`` (the resolved config as tracker params)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)

    walk("", config)
    return out


def mlflow_tracking_uri(run_dir: Path, given: str) -> str:
    """``--mlflow-uri`` as an MLflow tracking URI: a URI as given, a path as ``file://`` (default ``RUN/mlruns``)."""
    if given and ("://" in given or given.startswith(("file:", "sqlite:", "databricks"))):
        return given
    return Path(given or run_dir / "mlruns").expanduser().resolve().as_uri()


class MlflowTracker:
    """Params, metrics and the run directory as artifacts, through ``MlflowClient`` (no global MLflow state)."""

    def __init__(self, run_dir: Path, opts: TrackerOptions, config: dict[str, Any]) -> None:
        uri = mlflow_tracking_uri(run_dir, opts.mlflow_uri)
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.run_dir, self.uri = run_dir, uri
        try:
            self.client = MlflowClient(tracking_uri=uri)
            run_id = opts.run_ids.get("mlflow")
            if run_id:
                self.client.update_run(run_id, status="RUNNING")
            else:
                exp = self.client.get_experiment_by_name(EXPERIMENT)
                exp_id = exp.experiment_id if exp else self.client.create_experiment(EXPERIMENT)
                run_id = self.client.create_run(exp_id, run_name=run_dir.name,
                                                tags={"marlctl.run_dir": str(run_dir.resolve())}).info.run_id
                params = [Param(k, v[:6000]) for k, v in flat_params(config).items()]
                for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                    self.client.log_batch(run_id, params=params[i:i + 100])
        except MlflowException as exc:
            raise ConfigValueError(f"MLflow tracking store {uri} cannot be used: {str(exc).splitlines()[0]}") from None
        self.run_id = run_id

    def log(self, record: dict[str, Any], scalars: dict[str, float], env_steps: int) -> None:
        if not scalars:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, env_steps) for k, v in scalars.items()])

    def close(self, finished: bool) -> None:
        for path in artifact_files(self.run_dir):
            parent = path.parent.relative_to(self.run_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), artifact_path=None if parent == "." else parent)
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "FAILED")


def artifact_files(run_dir: Path) -> list[Path]:
    """The run directory's files for MLflow: all but the trackers' own stores (``mlruns/``, ``wandb/``) and the
    replay snapshots (``checkpoints/replay_*.npz``: up to hundreds of MB, kept in the run dir for ``--resume``)."""
    out = []
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir).parts
        if not path.is_file() or rel[0] in ("mlruns", "wandb") or (rel[0] == "checkpoints" and
                                                                   path.name.startswith("replay_")):
            continue
        out.append(path)
    return out


def wandb_mode() -> str:
    """``online`` only where the user configured W&B (WANDB_MODE, an API key, or a ``wandb login``)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "online" if "api.wandb.ai" in netrc.read_text() else "offline"
    except OSError:
        return "offline"


class WandbTracker:
    def __init__(self, run_dir: Path, opts: TrackerOptions, config: dict[str, Any]) -> None:
        import wandb

        self.mode = wandb_mode()
        run_id = opts.run_ids.get("wandb")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", EXPERIMENT), dir=str(run_dir), name=run_dir.name,
            config=config, mode=self.mode, id=run_id, resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", silent=True),
        )
        self.run_id = self.run.id

    def log(self, record: dict[str, Any], scalars: dict[str, float], env_steps: int) -> None:
        if scalars:
            self.run.log(scalars, step=env_steps)

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


class RunLogger:
    """The run's trackers as one: ``event`` goes to each of them, ``close`` closes them all."""

    def __init__(self, run_dir: Path, options: TrackerOptions | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        opts = options or TrackerOptions()
        self.trackers: list[Tracker] = []
        self.finished = False
        run_ids = dict(opts.run_ids)
        try:
            for name in opts.names:
                if name == "jsonl":
                    self.trackers.append(JsonlTracker(self.run_dir))
                elif name == "tensorboard":
                    self.trackers.append(TensorBoardTracker(self.run_dir))
                elif name == "mlflow":
                    tracker = MlflowTracker(self.run_dir, opts, config or {})
                    run_ids["mlflow"] = tracker.run_id
                    self.trackers.append(tracker)
                elif name == "wandb":
                    wb = WandbTracker(self.run_dir, opts, config or {})
                    run_ids["wandb"] = wb.run_id
                    self.trackers.append(wb)
        except BaseException:
            self.close()
            raise
        if opts.names != DEFAULT_TRACKERS or run_ids or (self.run_dir / STATE_FILE).exists():
            TrackerOptions(opts.names, opts.mlflow_uri, run_ids).save(self.run_dir)

    def event(self, event: str, env_steps: int, scalars: dict[str, float] | None = None, **extra: Any) -> None:
        record = {"event": event, "env_steps": env_steps, "time": round(time.time(), 3), **extra, **(scalars or {})}
        finite = {k: float(v) for k, v in (scalars or {}).items() if isinstance(v, int | float) and math.isfinite(v)}
        if event == "end":
            self.finished = True
        for tracker in self.trackers:
            tracker.log(record, finite, env_steps)

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        error: BaseException | None = None
        for tracker in trackers:  # every tracker is closed even when one of them fails
            try:
                tracker.close(self.finished)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                error = error or exc
        if error is not None:
            raise error
