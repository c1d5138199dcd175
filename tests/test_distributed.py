"""Training with rollout workers on a real two-node Ray cluster (``ray.cluster_utils.Cluster``), no mocks of Ray.

One cluster serves the whole module (two raylets with 2 CPUs each on this machine); each test starts its own
worker actors on it. Faults are real: a worker process SIGKILLs itself from inside its env's step (so a collect
task is in flight when it dies, and is lost), a worker raises mid-episode.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from kill_resume import kill_and_resume
from marlctl.envs import env_spec
from marlctl.trainer.config import load_config
from marlctl.trainer.distributed.cluster import WORKER_NICENESS_ENV
from marlctl.trainer.distributed.errors import VersionMismatchError, WorkerError
from marlctl.trainer.run import TrainingRun
from marlctl.trainer.train_metrics import TrainMetrics
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

ray = pytest.importorskip("ray")

QUIET = Console(quiet=True)
# Scheduled first of all (tests/conftest.py, FIRST), so under pytest-xdist its Ray head starts in a fresh worker
# process. Seen once in a worker that had run other modules first (gRPC threads live in it): the head's GCS
# server wrote no log and no port file within Ray's 30 s.
pytestmark = pytest.mark.slow

# matrix:qtran as in test_qtran_matrix.py: 32 one-step episodes per iteration, 8 updates per iteration.
QTRAN = ["env.num_envs=32", "learner.updates_per_iteration=8", "run.eval_interval=0", "run.eval_episodes=8",
         "run.progress=false", "run.save_interval=0", "mixer.joint_embed_dim=32"]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # Workers at niceness 0, as `--ray local` starts them: at Ray's default 15 the other test worker's
    # torch threads starved this module's rollout workers (its fault tests took 10-30x their time alone).
    # Only while the nodes start (their raylets keep it): test_ray_local_... must not inherit it.
    node = {"num_cpus": 2, "object_store_memory": 100 * 2**20}
    with pytest.MonkeyPatch.context() as env:
        env.setenv(WORKER_NICENESS_ENV, "0")
        c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        c.add_node(**node)
    ray.init(address=c.address, log_to_driver=False, logging_level=logging.WARNING)
    yield c
    ray.shutdown()
    c.shutdown()


def config(cluster, algo: str, env_id: str, steps: int, *extra: str, workers: int = 2, seed: int = 0):
    return load_config(algo, env_id, overrides=[f"ray.address={cluster.address}", f"ray.rollout_workers={workers}",
                                                "run.progress=false", *extra], steps=steps, seed=seed, device="cpu")


def events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def restarted_pid(actor, old_pid: int, deadline_s: float = 120.0) -> int:
    """The pid of ``actor``'s process once Ray has restarted it (asking again while it is restarting)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            pid = ray.get(actor.info.remote(), timeout=30)["pid"]
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            pid = old_pid
        if pid != old_pid or time.monotonic() > deadline:
            return pid
        time.sleep(0.2)


class KillWorkerOnce:
    """A run observer that, after iteration ``at``, makes worker ``w``'s env SIGKILL its own process on its next
    step: the process dies inside a collect task (not between two), so that task, and any queued behind it, is
    lost whatever the timing of the learner's submissions."""

    def __init__(self, w: int, at: int) -> None:
        self.w, self.at, self.pid = w, at, None

    def on_iteration(self, run, stats) -> None:
        if run.state.iterations == self.at:
            actor = run.algo.pool.actors[self.w]
            self.pid = ray.get(actor.info.remote())["pid"]

            def die_on_next_step(worker) -> None:
                def die(actions):
                    os.kill(os.getpid(), signal.SIGKILL)

                worker.algo.worker.env.step = die

            actor.__ray_call__.remote(die_on_next_step)

    def on_eval(self, run) -> None:
        pass


# ------------------------------------------------------------------ learning


def test_qtran_base_with_two_workers_reaches_return_8(cluster, tmp_path: Path) -> None:
    cfg = config(cluster, "qtran-base", "matrix:qtran", 4000, *QTRAN)
    run = TrainingRun(cfg, tmp_path, env_spec(cfg.env.env_id), QUIET)
    try:
        summary = run.loop_to_end()
        steps = run.algo.worker_env_steps()
        buffer = run.algo.inner.buffer
    finally:
        run.close()
    assert summary.last_eval["eval/return"] == pytest.approx(8.0)  # decentralized greedy agents play (A, A)
    assert set(steps) == {"0", "1"} and min(steps.values()) > 0  # both workers fed the learner
    assert sum(steps.values()) == summary.env_steps == buffer.episodes_added  # one-step episodes, none lost
    starts = events(tmp_path, "worker_start")
    assert sorted(e["worker"] for e in starts) == [0, 1] and starts[0]["pid"] != starts[1]["pid"]


def test_tad_ppo_with_two_workers_reaches_the_optimum(cluster, tmp_path: Path) -> None:
    """matrix:tad as in test_tad_ppo.py (40 iterations of 32 envs), here 2 workers x 16 envs per iteration."""
    cfg = config(cluster, "tad-ppo", "matrix:tad", 40 * 32, "ray.envs_per_worker=16", "run.eval_interval=0",
                 "run.save_interval=0")
    run = TrainingRun(cfg, tmp_path, env_spec(cfg.env.env_id), QUIET)
    try:
        summary = run.loop_to_end()
        assert run.algo.inner.B == 32  # one on-policy batch = both workers' envs
        steps = run.algo.worker_env_steps()
    finally:
        run.close()
    assert summary.last_eval["eval/joint_return"] == pytest.approx(10.0)  # TAD-PPO-T
    assert summary.last_eval["eval/return"] == pytest.approx(10.0)  # the distilled decentralized agents
    assert steps == {"0": 640, "1": 640}  # synchronous: every iteration takes one rollout from each worker
    assert summary.last_train["train/policy_lag"] == 0.0


def test_tad_ppo_distill_envs_are_each_workers_own_quarter(cluster, tmp_path: Path) -> None:
    """``algo.distill_envs`` (DAgger) with workers: each worker drives the first quarter of its own envs with the
    decentralized policy, and the learner's batch keeps those rows out of PPO (its ``decentralized`` mask)."""
    cfg = config(cluster, "tad-ppo", "matrix:tad10", 2 * 16, "ray.envs_per_worker=8", "algo.distill_envs=0.25",
                 "run.eval_interval=0", "run.save_interval=0")
    run = TrainingRun(cfg, tmp_path, env_spec(cfg.env.env_id), QUIET)
    try:
        ro, metrics, steps, _ = run.algo.inner._collect()
        stats = run.algo.train_iteration()
    finally:
        run.close()
    per_env = ro.decentralized.any(0).cpu().numpy()
    assert per_env.tolist() == [True, True] + [False] * 6 + [True, True] + [False] * 6
    assert (ro.decentralized == ro.decentralized[:1]).all()  # a row is one kind for the whole rollout
    assert "train/decentralized_return" in metrics and "train/return" in metrics
    assert np.isfinite(stats.metrics["loss/distill"])


def test_same_seed_same_first_episodes_and_stale_episodes_are_dropped(cluster) -> None:
    """Worker w's envs are seeded from (run seed, w): two runs with the same seed and worker count collect the
    same first episodes. Then the learner moves on two versions with all four version-0 tasks (two queued per
    worker) still unread: with max_policy_lag=1 all are dropped and counted, and the episodes taken are of the
    current version."""
    from marlctl.trainer.distributed.algorithm import DistributedAlgorithm
    from marlctl.trainer.replay import ReplayBuffer

    spec = env_spec("matrix:qtran")

    def first_tasks(algo) -> dict[tuple[int, int], dict[str, np.ndarray]]:
        algo.source.feed()  # both workers queue ray.tasks_per_worker = 2 tasks with version 0
        assert [algo.pool.in_flight(w, "collect") for w in (0, 1)] == [2, 2]
        while len(algo.source.ready) < 4:
            for task, result in algo.pool.wait():
                algo.source.on_result(task, result)
        return {(t.worker, t.task): r["episodes"] for t, r in algo.source.ready}

    cfg = config(cluster, "vdn", "matrix:qtran", 100, "env.num_envs=16", "ray.max_policy_lag=1")
    algo = DistributedAlgorithm(cfg, spec, torch.device("cpu"))
    try:
        a = first_tasks(algo)
    finally:
        algo.close()
    algo = DistributedAlgorithm(cfg, spec, torch.device("cpu"))
    try:
        b = first_tasks(algo)
        algo.policy.version = 2  # the learner moved on two versions meanwhile
        buffer = ReplayBuffer(spec, 100, spec.episode_limit)
        res = algo.source.run_episodes(16, 0, 1.0, np.random.default_rng(0), sink=buffer)
        dropped, lag = algo.pool.counters.episodes_dropped, algo.source.last_lag
    finally:
        algo.close()
    assert sorted(a) == sorted(b) == [(0, 0), (0, 1), (1, 2), (1, 3)]  # task ids: worker 0 first, in order
    for key in a:
        for name in ("obs", "actions", "reward", "filled"):
            np.testing.assert_array_equal(a[key][name], b[key][name])
    first = {w: a[min(k for k in a if k[0] == w)] for w in (0, 1)}
    assert not np.array_equal(first[0]["actions"], first[1]["actions"])  # workers' envs, exploration seeded apart
    assert not np.array_equal(a[(0, 0)]["actions"], a[(0, 1)]["actions"])  # and each task of one worker
    assert dropped == {"policy_lag": 64}  # the four version-0 tasks (16 episodes each): lag 2 > 1
    assert res.episodes == 16 and len(buffer) == 16 and lag <= 1  # a task of version 2 was taken


def test_kill_9_of_the_learner_at_random_moments_then_resume_with_other_worker_counts(cluster, tmp_path: Path) -> None:
    """The Ray path of test_checkpoints.py's kill test: SIGKILL the whole `marlctl train --ray` process (the
    learner) at a seeded random moment after its first checkpoint, `--resume` with one worker instead of two;
    the run ends at its budget and the replay holds exactly the episodes the run counted, none twice."""
    run, steps = tmp_path / "run", 4096
    base = [sys.executable, "-m", "marlctl.cli.app", "train"]
    first = [*base, "--algo", "qtran-base", "--env", "matrix:qtran", "--steps", str(steps), "--device", "cpu",
             "--out", str(run), "--ray", cluster.address, "--rollout-workers", "2"]
    for item in ["run.progress=false", "run.eval_interval=0", "run.eval_episodes=4", "run.save_interval=256",
                 "run.keep_checkpoints=1"]:
        first += ["--set", item]
    resumed_with: list[int] = []

    def argv(start: int) -> list[str]:
        if start == 0:
            return first
        workers = 2 - start % 2  # 2, then 1, then 2 again
        resumed_with.append(workers)
        return [*base, "--resume", str(run), "--rollout-workers", str(workers)]

    kill_and_resume(argv, run / "checkpoints" / "latest.pt", random.Random(11), starts=3, max_delay_s=1.0,
                    checkpoint_timeout_s=180)
    workers = resumed_with[-1]  # kill_and_resume made at least one kill, so at least one resume
    latest = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert latest["env_steps"] == latest["run"]["env_steps"] >= steps
    assert latest["replay"]["episodes_added"] == latest["run"]["episodes"] == latest["env_steps"]  # one-step episodes
    counters = latest["algorithm"]["distributed"]["counters"]
    assert sum(counters["env_steps"].values()) == latest["env_steps"]
    assert json.loads((run / "config.json").read_text())["ray"]["rollout_workers"] == workers
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    resumes = [i for i, e in enumerate(log) if e["event"] == "resume"]
    assert len(resumes) == len(resumed_with) >= 1
    for i, n in zip(resumes, resumed_with, strict=True):  # each resumed learner started its own worker count
        starts = []
        for e in log[i + 1:]:
            if e["event"] == "resume":
                break
            starts += [e["worker"]] if e["event"] == "worker_start" else []
        assert starts == list(range(n)), (n, starts)
    assert log[-1]["event"] == "end" and log[-1]["env_steps"] == latest["env_steps"]


# ------------------------------------------------------------------ faults


def test_sigkill_of_a_worker_mid_run_is_survived_and_counted(cluster, tmp_path: Path) -> None:
    cfg = config(cluster, "qtran-base", "matrix:qtran", 2048, *QTRAN)
    run = TrainingRun(cfg, tmp_path, env_spec(cfg.env.env_id), QUIET)
    kill = KillWorkerOnce(0, at=5)
    metrics = TrainMetrics.serve(0, run, host="127.0.0.1")
    run.observers += [kill, metrics]
    try:
        summary = run.loop_to_end()
        samples = scrape(metrics.port)
        pid_now = restarted_pid(run.algo.pool.actors[0], kill.pid)
        faults = run.algo.fault_metrics()
    finally:
        metrics.close()
        run.close()
    assert summary.env_steps >= 2048  # the run finished
    assert kill.pid is not None and pid_now != kill.pid  # Ray restarted the killed worker (a new process)
    failure = events(tmp_path, "worker_failure")
    # The task running when the process died, then any queued behind it (ray.tasks_per_worker = 2): one restart.
    assert [(e["worker"], e["reason"], e["call"], e.get("queued", False)) for e in failure][:1] == [
        (0, "worker_lost", "collect", False)]
    assert [(e["worker"], e["reason"], e.get("queued")) for e in failure[1:]] in ([], [(0, "worker_lost", True)])
    assert [e["task"] for e in failure] == sorted(e["task"] for e in failure)  # handled in submission order
    lost = sum(e["episodes_dropped"] for e in failure)
    assert all(e["episodes_dropped"] == 32 for e in failure)  # each lost task's episodes: one per env
    assert faults["train/worker_restarts"] == 1.0 and faults["train/episodes_dropped/worker_lost"] == lost
    end = events(tmp_path, "end")[-1]  # the totals after the last tasks settled, in the log too
    assert end["train/worker_restarts"] == 1.0 and end["train/episodes_dropped/worker_lost"] == lost
    assert samples[("marl_train_worker_restarts_total", ())] == 1.0
    assert samples[("marl_train_episodes_dropped_total", (("reason", "worker_lost"),))] == lost
    per_worker = {dict(k[1])["worker"]: v for k, v in samples.items() if k[0] == "marl_train_env_steps_total"}
    assert sum(per_worker.values()) == summary.env_steps and set(per_worker) == {"0", "1"}


def test_worker_raising_mid_episode_is_logged_restarted_and_counted(cluster, tmp_path: Path) -> None:
    """The fault is injected into the worker's own env (its step raises once); the learner logs the worker's
    traceback, restarts the actor (a fresh env) and counts the task's episodes."""
    cfg = config(cluster, "vdn", "matrix:qtran", 1024, *QTRAN[:-1])
    run = TrainingRun(cfg, tmp_path, env_spec(cfg.env.env_id), QUIET)

    def break_env_once(worker) -> None:
        step = worker.algo.worker.env.step

        def boom(actions):
            worker.algo.worker.env.step = step
            raise FloatingPointError("injected fault in env.step")

        worker.algo.worker.env.step = boom

    class Inject:
        def on_iteration(self, run, stats):
            if run.state.iterations == 3:
                run.algo.pool.actors[1].__ray_call__.remote(break_env_once)

        def on_eval(self, run):
            pass

    run.observers.append(Inject())
    try:
        summary = run.loop_to_end()
        faults = run.algo.fault_metrics()
    finally:
        run.close()
    failure = events(tmp_path, "worker_failure")
    # The raising task, then any task queued behind it on the actor the learner restarts (lost with it).
    assert [(e["worker"], e["reason"], e.get("queued", False)) for e in failure][:1] == [(1, "worker_error", False)]
    assert [(e["worker"], e["reason"], e.get("queued")) for e in failure[1:]] in ([], [(1, "worker_error", True)])
    assert "FloatingPointError: injected fault in env.step" in failure[0]["traceback"]
    assert "env.step" in failure[0]["traceback"] and all(e["episodes_dropped"] == 32 for e in failure)
    lost = sum(e["episodes_dropped"] for e in failure)
    assert faults["train/worker_restarts"] == 1.0 and faults["train/episodes_dropped/worker_error"] == lost
    assert summary.env_steps >= 1024


# ------------------------------------------------------------------ bad input


def test_a_worker_whose_env_fails_to_build_stops_the_run_with_its_error(cluster, tmp_path: Path) -> None:
    from marlctl.trainer.distributed.pool import WorkerPool

    payoff = tmp_path / "payoff.json"
    payoff.write_text(json.dumps([[1.0, 0.0], [0.0, 1.0]]))
    cfg = config(cluster, "vdn", f"matrix:file={payoff}", 10)
    payoff.unlink()  # the learner read it; the workers cannot
    with pytest.raises(WorkerError, match=r"rollout worker \d failed: .*payoff\.json"):
        WorkerPool(cfg, "value", lambda *a, **k: None)


def test_a_worker_of_another_marlctl_version_is_refused(cluster) -> None:
    from marlctl.trainer.distributed.pool import worker_error
    from marlctl.trainer.distributed.worker import RolloutWorkerActor, marlctl_version

    cfg = config(cluster, "vdn", "matrix:qtran", 10)
    actor = ray.remote(RolloutWorkerActor).remote(cfg.to_dict(), 0, "0.0.0-other")
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(actor.info.remote())
    err = worker_error(0, info.value)  # how the pool reports it
    assert isinstance(err, VersionMismatchError)
    assert f"runs marlctl {marlctl_version()}" in str(err) and "the learner marlctl 0.0.0-other" in str(err)
    ray.kill(actor)


LOCAL_WORKER_NICENESS = """
import os, ray
from marlctl.trainer.distributed.cluster import connect
disconnect = connect("local", 5)
print(ray.get(ray.remote(lambda: os.nice(0)).options(num_cpus=0).remote()))
disconnect()
"""


def test_ray_local_starts_its_workers_at_normal_priority() -> None:
    """``--ray local``: the rollout workers run at niceness 0, not Ray's default 15, under which anything else on
    the machine (the learner on the driver) starves them. Its own process: the module's cluster stays connected."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_worker_niceness"}
    p = subprocess.run([sys.executable, "-c", LOCAL_WORKER_NICENESS], capture_output=True, text=True, timeout=120,
                       env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == str(os.nice(0))


def test_unreachable_address_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "marlctl.cli.app", "train", "--algo", "vdn", "--env", "matrix:qtran",
                        "--steps", "10", "--out", str(out), "--ray", f"127.0.0.1:{port}", "--rollout-workers", "2",
                        "--set", "ray.connect_timeout_s=3"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "300"})
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"cannot reach a Ray head at 127.0.0.1:{port}" in p.stderr and "ray start --head" in p.stderr
    assert not out.exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--ray", "local", "--rollout-workers", "0"], "--ray local needs --rollout-workers >= 1"),
    (["--rollout-workers", "2"], "--rollout-workers 2 needs --ray local or --ray HOST:PORT"),
    (["--ray", "headnode"], "--ray 'headnode' is not an address; valid: local, or HOST:PORT"),
    (["--ray", "local", "--rollout-workers", "2", "--worker-cpus", "0"], "worker_cpus=0.0"),
    (["--ray", "local", "--rollout-workers", "2", "--max-policy-lag", "-1"], "max_policy_lag=-1"),
    (["--ray", "local", "--rollout-workers", "2", "--set", "ray.tasks_per_worker=0"], "tasks_per_worker=0"),
    (["--metrics-port", "70000"], "--metrics-port 70000 is not a port; valid: 1..65535"),
])
def test_bad_distributed_flags_exit_2(flags: list[str], message: str, tmp_path: Path) -> None:
    from marlctl.cli.app import app
    from typer.testing import CliRunner

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--algo", "vdn", "--env", "matrix:qtran", "--steps", "10",
                                      "--out", str(out), *flags], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists()


# ------------------------------------------------------------------ metrics on the single-process path


def test_metrics_port_exports_a_local_run(tmp_path: Path) -> None:
    cfg = load_config("vdn", "matrix:qtran", overrides=[*QTRAN[:-1], "run.eval_interval=256"], steps=512,
                      device="cpu")
    run = TrainingRun(cfg, tmp_path, env_spec(cfg.env.env_id), QUIET)
    metrics = TrainMetrics.serve(0, run, host="127.0.0.1")
    run.observers.append(metrics)
    try:
        summary = run.loop_to_end()
        samples = scrape(metrics.port)
    finally:
        metrics.close()
        run.close()
    assert samples[("marl_train_env_steps_total", (("worker", "local"),))] == summary.env_steps == 512
    assert samples[("marl_train_updates_total", ())] == summary.updates
    assert samples[("marl_train_eval_return", ())] == pytest.approx(summary.last_eval["eval/return"])
    assert samples[("marl_train_eval_win_rate", ())] == pytest.approx(summary.last_eval["eval/win_rate"])


def test_joined_rollouts_of_different_lengths_keep_every_valid_advantage() -> None:
    """Synchronous on-policy batches join workers' rollouts along the env axis; an `episodes` rollout stops when
    its envs have all ended, so lengths differ and the shorter ones are padded: GAE on the joined batch equals
    GAE on each part for every valid step (no advantage leaks across the padding)."""
    from algo_helpers import build_algo
    from marlctl.trainer.distributed.collect import combine_rollouts
    from marlctl.trainer.ppo.gae import gae

    algo = build_algo("mappo", "hallway", "env.num_envs=2", "env.rollout=episodes")
    parts = []
    for it in range(8):
        algo.iteration = it
        ro, _, _, _ = algo._collect()
        parts.append({k: v.numpy() for k, v in vars(ro).items()})
        if len({p["obs"].shape[0] for p in parts}) > 1 and len(parts) >= 2:
            break
    a, b = parts[0], parts[-1]
    assert a["obs"].shape[0] != b["obs"].shape[0], "the rollouts happen to have one length: nothing tested"
    joined = combine_rollouts([a, b], torch.device("cpu"))

    def advantages(r: dict) -> torch.Tensor:
        t = {k: torch.as_tensor(v) for k, v in r.items()}
        T, B, N = t["values"].shape
        flat = [x.reshape(T, B * N) if x.dim() == 3 else x[:, :, None].expand(T, B, N).reshape(T, B * N)
                for x in (t["rewards"], t["values"], t["next_values"], t["terminated"], t["ended"])]
        return gae(*flat, 0.99, 0.95)[0].view(T, B, N)

    adv = advantages(joined)
    for offset, part in ((0, a), (a["obs"].shape[1], b)):
        own, t, envs = advantages(part), part["obs"].shape[0], part["obs"].shape[1]
        valid = torch.as_tensor(part["valid"])
        torch.testing.assert_close(adv[:t, offset:offset + envs][valid], own[valid])
    assert not joined["valid"][max(a["obs"].shape[0], b["obs"].shape[0]) - 1:].all()  # padding is invalid
