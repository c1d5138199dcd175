"""Experiment trackers: a short run logged to MLflow's file store and read back with MLflow's own client (then
resumed into the same MLflow run), W&B offline, the default JSONL + TensorBoard selection, and bad --logger input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from marlctl.trainer.config import load_config
from marlctl.trainer.errors import ConfigValueError
from marlctl.trainer.run import resume_run, train_run
from marlctl.trainer.trackers import STATE_FILE, RunLogger, TrackerOptions, flat_params, mlflow_tracking_uri
from rich.console import Console

TINY = ["env.num_envs=4", "replay.batch_size=4", "replay.capacity=64", "agent.hidden_dim=16",
        "run.eval_interval=0", "run.eval_episodes=4", "run.log_interval=50", "run.save_interval=0",
        "run.progress=false"]
ENV = "hallway"


def _train(run_dir: Path, trackers: TrackerOptions, steps: int = 200) -> None:
    cfg = load_config("vdn", ENV, overrides=TINY, steps=steps, seed=1, device="cpu")
    train_run(cfg, run_dir, Console(quiet=True), trackers=trackers)


def _jsonl(run_dir: Path, event: str) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in lines if r["event"] == event]


def test_mlflow_run_reads_back_through_mlflow_client(tmp_path: Path, one_thread: None) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    _train(run_dir, TrackerOptions.parse("jsonl,mlflow"))
    assert not (run_dir / "tb").exists(), "tensorboard was not selected"
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("marlctl")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    cfg = json.loads((run_dir / "config.json").read_text())
    assert run.data.params == flat_params(cfg) and run.data.params["run.algo"] == "vdn"
    trains = _jsonl(run_dir, "train")
    history = client.get_metric_history(run.info.run_id, "train/return")
    assert [(m.step, m.value) for m in history] == [(r["env_steps"], r["train/return"]) for r in trains]
    evals = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/return")]
    assert evals == [(r["env_steps"], r["eval/return"]) for r in _jsonl(run_dir, "eval")] and len(evals) == 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "log.jsonl", "checkpoints", STATE_FILE} <= artifacts and "mlruns" not in artifacts
    stored = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    on_disk = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert any(n.startswith("replay_") for n in on_disk), "the value method's run has a replay snapshot"
    assert stored == {n for n in on_disk if not n.startswith("replay_")}, "every checkpoint but the replay snapshot"

    resume_run(run_dir, steps=300, console=Console(quiet=True))
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id], "resume continues the same MLflow run"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/return")]
    assert steps == sorted(steps) and steps[-1] >= 300 and len(steps) > len(history)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_mlflow_marks_a_run_closed_before_its_end_failed(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = tmp_path / "elsewhere"
    logger = RunLogger(tmp_path, TrackerOptions.parse("mlflow", str(store)), {"run": {"algo": "qmix"}})
    logger.event("train", 10, {"train/return": 1.5, "train/nan": float("nan")}, note="text is not a metric")
    logger.close()
    client = MlflowClient(tracking_uri=mlflow_tracking_uri(tmp_path, str(store)))
    (run,) = client.search_runs([client.get_experiment_by_name("marlctl").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.metrics == {"train/return": 1.5} and run.data.params == {"run.algo": "qmix"}
    assert not (tmp_path / "log.jsonl").exists() and not (tmp_path / "mlruns").exists()


def test_wandb_logs_offline_and_resumes_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline only: nothing here can reach a W&B server, so the run's files are checked, not W&B's history."""
    pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    logger = RunLogger(tmp_path, TrackerOptions.parse("wandb"), {"run": {"algo": "vdn"}})
    run_id = logger.trackers[0].run_id  # type: ignore[attr-defined]
    assert logger.trackers[0].mode == "offline"  # type: ignore[attr-defined]
    logger.event("train", 10, {"train/return": 1.0})
    logger.event("end", 10, {"wall_s": 1.0})
    logger.close()
    saved = TrackerOptions.load(tmp_path)
    assert saved.names == ("wandb",) and saved.run_ids == {"wandb": run_id}
    (offline,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    assert (offline / f"run-{run_id}.wandb").stat().st_size > 0
    again = RunLogger(tmp_path, TrackerOptions.load(tmp_path), {})
    assert again.trackers[0].run_id == run_id  # type: ignore[attr-defined]
    again.close()


def test_default_trackers_are_jsonl_and_tensorboard(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    logger.event("train", 5, {"train/return": 2.0})
    logger.close()
    assert _jsonl(tmp_path, "train")[0]["train/return"] == 2.0
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert not (tmp_path / STATE_FILE).exists(), "a run with the default trackers writes no trackers.json"


@pytest.mark.parametrize(
    ("logger", "uri", "says"),
    [
        ("tensorboard,foo", None, "unknown logger 'foo'; valid: tensorboard, jsonl, mlflow, wandb"),
        ("", None, "at least one tracker"),
        ("jsonl,jsonl", None, "twice"),
        ("jsonl", "/tmp/x", "only used with --logger ...,mlflow"),
    ],
)
def test_bad_tracker_options(logger: str, uri: str | None, says: str) -> None:
    with pytest.raises(ConfigValueError, match=says.replace(".", r"\.")):
        TrackerOptions.parse(logger, uri)


def test_cli_bad_logger_is_one_line_exit_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "marlctl.cli.app", "train", "--algo", "vdn", "--env", ENV, "--out",
         str(tmp_path / "run"), "--logger", "jsonl,mlfow"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 2 and "unknown logger 'mlfow'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
