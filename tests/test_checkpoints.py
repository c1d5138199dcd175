"""Checkpoints a disk can hold: one replay snapshot per run dir, small step files, exact resume after kill -9."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from kill_resume import kill_and_resume
from marlctl.trainer.config import load_config
from marlctl.trainer.errors import CheckpointError
from marlctl.trainer.run import resume_run, train_run
from rich.console import Console

QUIET = Console(quiet=True)
SMALL = ["run.progress=false", "run.eval_interval=0", "run.eval_episodes=4", "run.save_interval=128",
         "run.keep_checkpoints=2", "env.num_envs=8", "replay.batch_size=8"]


def _ckpts(run: Path) -> dict[str, list[Path]]:
    d = run / "checkpoints"
    return {"step": sorted(d.glob("step_*.pt")), "replay": sorted(d.glob("replay_*.npz")),
            "tmp": sorted(d.glob(".*.tmp*"))}


def test_a_value_run_keeps_one_replay_snapshot_and_small_step_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = load_config("qmix", "hallway", overrides=SMALL, steps=1200, seed=3)
    summary = train_run(cfg, run, console=QUIET)
    files = _ckpts(run)
    assert len(files["replay"]) == 1 and len(files["step"]) == 2 and not files["tmp"]
    latest = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    ref = latest["replay"]
    assert ref["file"] == files["replay"][0].name == f"replay_{summary.env_steps}.npz"
    assert ref["episodes_added"] == summary.episodes  # every finished episode went into the buffer once
    assert "buffer" not in latest["algorithm"]
    step = files["step"][-1]
    assert step.stat().st_size < files["replay"][0].stat().st_size  # the buffer is stored once, not per step
    with np.load(files["replay"][0], allow_pickle=False) as z:  # plain arrays, readable without pickle
        assert z["data_obs"].shape[0] == ref["episodes"] == min(summary.episodes, cfg.replay.capacity)


def test_policy_methods_write_no_replay_snapshot(tmp_path: Path) -> None:
    cfg = load_config("mappo", "matrix:tad", overrides=["run.progress=false", "run.save_interval=64"], steps=256)
    train_run(cfg, tmp_path / "run", console=QUIET)
    files = _ckpts(tmp_path / "run")
    assert files["step"] and not files["replay"]
    assert torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)["replay"] is None


def test_a_missing_replay_snapshot_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_run(load_config("vdn", "hallway", overrides=SMALL, steps=400), run, console=QUIET)
    snapshot = _ckpts(run)["replay"][0]
    snapshot.rename(tmp_path / "elsewhere.npz")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=f"names the replay snapshot {snapshot.name}, which is missing"):
        resume_run(run, steps=800, console=QUIET)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def test_kill_9_at_random_moments_then_resume_finishes_with_a_consistent_replay(tmp_path: Path) -> None:
    """SIGKILL the whole `marlctl train` process at seeded random moments (saves are frequent, so some kills land
    while a checkpoint is being written); `--resume` each time; the run ends at its budget and the replay holds
    exactly the episodes the run counted."""
    run, steps = tmp_path / "run", 6000
    cmd = [sys.executable, "-m", "marlctl.cli.app", "train", "--algo", "qtran-base", "--env", "matrix:qtran",
           "--steps", str(steps), "--device", "cpu", "--out", str(run)]
    for item in ["run.progress=false", "run.eval_interval=0", "run.save_interval=256", "run.keep_checkpoints=1"]:
        cmd += ["--set", item]
    resume = [*cmd[:3], "train", "--resume", str(run)]
    kill_and_resume(lambda start: cmd if start == 0 else resume, run / "checkpoints" / "latest.pt",
                    random.Random(7), starts=4, max_delay_s=1.5)
    latest = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    files = _ckpts(run)
    assert latest["env_steps"] == latest["run"]["env_steps"] >= steps
    assert len(files["replay"]) == 1 and files["replay"][0].name == latest["replay"]["file"]
    assert latest["replay"]["episodes_added"] == latest["run"]["episodes"] == latest["env_steps"]  # one-step episodes
    end = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()][-1]
    assert end["event"] == "end" and end["env_steps"] == latest["env_steps"]
