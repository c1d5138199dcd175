"""The real `marlctl train` and `marlctl plot` commands, run as subprocesses on a tiny budget."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from marlctl.agents.bundle import load_agent_bundle

MARLCTL = [sys.executable, "-m", "marlctl.cli.app"]
TINY = ["--set", "env.num_envs=8", "--set", "run.eval_interval=100", "--set", "run.eval_episodes=8",
        "--set", "run.log_interval=50", "--set", "replay.batch_size=8"]


def marlctl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*MARLCTL, *args], capture_output=True, text=True, timeout=timeout,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


def test_train_resume_and_plot(tmp_path: Path) -> None:
    run = tmp_path / "run"
    p = marlctl("train", "--algo", "qmix", "--env", "matrix:qtran", "--steps", "200", "--seed", "2",
                "--device", "cpu", "--out", str(run), *TINY)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "marlctl train: qmix on matrix:qtran" in p.stdout and "env-steps/s" in p.stdout
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["run"]["algo"] == "qmix" and cfg["run"]["seed"] == 2 and cfg["env"]["num_envs"] == 8
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "train" in kinds and "eval" in kinds
    train = next(e for e in events if e["event"] == "train")
    for key in ("train/return", "train/epsilon", "loss/td", "train/env_steps_per_s", "train/updates_per_s"):
        assert key in train, key
    assert any((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "latest.pt").is_file() and list((run / "checkpoints").glob("step_*.pt"))
    assert load_agent_bundle(run).env_steps >= 200

    p = marlctl("train", "--resume", str(run), "--steps", "400")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "resumed" in p.stdout and "env step 2" in p.stdout
    assert load_agent_bundle(run).env_steps >= 400
    assert json.loads((run / "config.json").read_text())["run"]["steps"] == 400

    png = tmp_path / "curves.png"
    p = marlctl("plot", str(run), "--out", str(png))
    assert p.returncode == 0, p.stdout + p.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "qmix (matrix:qtran, 1 seed)" in p.stdout


def test_bad_input_exits_2_with_what_is_valid(tmp_path: Path) -> None:
    p = marlctl("train", "--algo", "qmixx", "--env", "matrix:qtran", "--out", str(tmp_path / "a"))
    assert p.returncode == 2 and "valid:" in p.stderr and "vdn" in p.stderr
    p = marlctl("train", "--algo", "vdn", "--env", "matrix:qtran", "--out", str(tmp_path / "a"),
                "--set", "optim.lrr=1")
    assert p.returncode == 2 and "valid keys" in p.stderr and "grad_clip" in p.stderr
    p = marlctl("train", "--algo", "vdn", "--env", "nosuchenv:3m", "--out", str(tmp_path / "a"))
    assert p.returncode == 2 and "valid families" in p.stderr
    assert not (tmp_path / "a").exists()  # nothing written for bad input
    p = marlctl("train", "--resume", str(tmp_path), "--algo", "vdn")
    assert p.returncode == 2 and "only --steps" in p.stderr
    p = marlctl("plot", str(tmp_path), "--out", str(tmp_path / "x.png"))
    assert p.returncode == 2 and "not a marlctl run directory" in p.stderr
