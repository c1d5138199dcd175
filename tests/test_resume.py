"""Resume: N steps in one go == N/2 steps + resume to N (every registered algorithm), and bad resumes refused
with nothing overwritten."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from marlctl.trainer.config import load_config
from marlctl.trainer.errors import CheckpointError, RunDirError
from marlctl.trainer.registry import ALGORITHMS
from marlctl.trainer.run import resume_run, train_run

TINY = ["env.num_envs=4", "replay.batch_size=4", "replay.capacity=64", "agent.hidden_dim=16",
        "learner.target_update_episodes=10", "exploration.epsilon_anneal_steps=300", "run.eval_interval=150",
        "run.eval_episodes=4", "run.log_interval=50", "run.save_interval=0", "run.progress=false"]
ENV = "hallway"  # multi-step episodes of varying length, fully NumPy


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Deep equality of checkpoint contents (tensors exactly), ignoring wall-clock time."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))} differ"
        for k in a:
            if k != "wall_s":
                assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def load(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_resumed_run_equals_uninterrupted_run(algo: str, tmp_path: Path) -> None:
    """The split is at an eval point (eval every 150 steps): a stop elsewhere adds one final greedy eval, which
    changes nothing but the eval counter (evals use seeds of their own, never the training RNG)."""
    full, split = tmp_path / "full", tmp_path / "split"
    train_run(load_config(algo, ENV, overrides=TINY, steps=300, seed=3, device="cpu"), full)
    train_run(load_config(algo, ENV, overrides=TINY, steps=150, seed=3, device="cpu"), split)
    half = load(split)
    assert 150 <= half["env_steps"] < 300
    resume_run(split, steps=300)
    a, b = load(full), load(split)
    assert a["env_steps"] == b["env_steps"] >= 300
    assert_same(a["agent"], b["agent"], "agent")
    assert_same(a["algorithm"], b["algorithm"], "algorithm")
    assert_same({k: v for k, v in a["run"].items()}, b["run"], "run")
    events = [line for line in (split / "log.jsonl").read_text().splitlines() if '"resume"' in line]
    assert len(events) == 1


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_bad_resumes_are_refused_and_overwrite_nothing(tmp_path: Path) -> None:
    vdn, qmix = tmp_path / "vdn", tmp_path / "qmix"
    train_run(load_config("vdn", ENV, overrides=TINY, steps=100, seed=0, device="cpu"), vdn)
    train_run(load_config("qmix", ENV, overrides=TINY, steps=100, seed=0, device="cpu"), qmix)
    with pytest.raises(RunDirError, match="already exists.*--resume"):
        train_run(load_config("vdn", ENV, overrides=TINY, steps=100, seed=0, device="cpu"), vdn)

    # a checkpoint of another run (other algorithm) is foreign
    shutil.copy(qmix / "checkpoints" / "latest.pt", vdn / "checkpoints" / "latest.pt")
    before = _snapshot(vdn)
    with pytest.raises(CheckpointError, match=r"belongs to another run \(algo: checkpoint 'qmix' vs run 'vdn'"):
        resume_run(vdn, steps=200)
    assert _snapshot(vdn) == before

    # a corrupt (truncated) checkpoint
    latest = vdn / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:500])
    before = _snapshot(vdn)
    with pytest.raises(CheckpointError, match="not a readable marlctl checkpoint"):
        resume_run(vdn, steps=200)
    assert _snapshot(vdn) == before

    # no checkpoint at all / not a run dir
    latest.unlink()
    with pytest.raises(CheckpointError, match="without checkpoints/latest.pt"):
        resume_run(vdn)
    with pytest.raises(RunDirError, match="not a marlctl run directory"):
        resume_run(tmp_path)


def test_steps_mode_resume_restarts_inflight_episodes(tmp_path: Path) -> None:
    """Documented difference: in ``env.rollout=steps`` the episodes in flight at the checkpoint are not stored,
    so a resumed run restarts its envs (one more env restart than the uninterrupted run) and then continues."""
    over = [*TINY, "env.rollout=steps", "env.steps_per_iteration=10", "run.eval_interval=0"]
    full, split = tmp_path / "full", tmp_path / "split"
    train_run(load_config("vdn", ENV, overrides=over, steps=400, seed=1, device="cpu"), full)
    train_run(load_config("vdn", ENV, overrides=over, steps=200, seed=1, device="cpu"), split)
    resume_run(split, steps=400)
    a, b = load(full)["algorithm"]["counters"], load(split)["algorithm"]["counters"]
    assert a["env_steps"] == b["env_steps"] == 400
    assert (a["env_restarts"], b["env_restarts"]) == (1, 2)
