"""Ray rollout workers: collection and training-loop env-steps/s, transfer cost, the learner's ingest ceiling,
a speedup model for W worker nodes, and learning parity with the single-process path (JSON + Markdown + PNG).

Sections (``--sections``, all by default):

* ``collection``: one worker's task loop (the real ``RolloutWorkerActor``: batched env + CPU agent network,
  episodes cut into arrays) run in this process ("bare", no Ray) and as a Ray actor seen from the learner
  (its results fetched here), on the same tasks (same seeded episodes), interleaved round by round, median
  of ``--rounds``; then 2 actors side by side. Target: Ray worker >= 0.9x bare.
* ``transfer``: per episode, the bytes a worker ships (pickle protocol 5, as Ray's serializer lays out the
  NumPy arrays) and the learner-observed time beyond the worker's own collection time. Target: <= 5% of a
  GRF episode's simulation time (per episode at the worker's throughput).
* ``ingest``: the learner with collection free: a real chunk of episodes re-inserted into the replay buffer
  and the iteration's updates (value methods), or the PPO update of a real rollout, timed -> episodes/s and
  env-steps/s the learner absorbs.
* ``loop``: whole training loop (``TrainingRun``) env-steps/s: today's path, 1 and 2 Ray workers
  (``--ray local`` on this machine; wall time excludes start-up).
* ``model``: predicted speedup for W = 1..64 worker nodes = min(W x one Ray worker's rate, ingest ceiling)
  / today's loop rate (a model from the measured rates, not a measurement).
* ``grf`` / ``grf-report``: the long GRF learning run (MAPPO, 2 workers, 2M env steps, scoring + checkpoint
  rewards), started or resumed in its run dir (``grf``), or only reported from its log (``grf-report``).
* ``parity``: TAD-PPO on matrix:tad10 (51.2k env steps) and hallway (20k) with the packaged configs, today's
  path vs 2 workers (same total envs per iteration, same seeds): final greedy returns. Resumable: one run dir
  per cell under ``--runs``; a finished cell is read back, not re-run.

    .venv/bin/python bench/distributed.py --out bench/results/distributed
    .venv/bin/python bench/distributed.py --sections parity --seeds 0 1

Numbers move with the machine's load (2 shared cores here; the load average at start is recorded): compare
ratios measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from marlctl.agents.files import atomic_write_text

ENVS = {"smax:3m": {"num_envs": 32, "loop_steps": 9600, "tasks": 16},  # tasks: per collection round and arm
        "grf:academy_3_vs_1_with_keeper": {"num_envs": 4, "loop_steps": 2400, "tasks": 3}}
VALUE_ALGO = "qmix"
W_MODEL = [1, 2, 4, 8, 16, 32, 64]


def config(env_id: str, algo: str = VALUE_ALGO, steps: int = 1000, *extra: str, seed: int = 0) -> Any:
    from marlctl.trainer.config import load_config

    return load_config(algo, env_id, overrides=[f"env.num_envs={ENVS[env_id]['num_envs']}", "run.progress=false",
                                                "run.eval_interval=0", "run.save_interval=0", *extra],
                       steps=steps, seed=seed, device="cpu")


# ------------------------------------------------------------------ collection + transfer


def drive(ray: Any, actors: list[Any], box: list[Any], tasks: list[int], depth: int) -> tuple[float, list[dict]]:
    """Play ``tasks`` on ``actors`` the way ``AsyncEpisodeSource`` does: ``depth`` collect calls queued on each
    actor, topped up as each returns. Returns (env-steps/s, each call's output with its wall seconds)."""
    todo, outs, pending = list(tasks), [], {}

    def submit(w: int) -> None:
        if todo:
            pending[actors[w].collect.remote(box, 0, todo.pop(0), 1.0)] = (w, time.perf_counter())

    t0 = time.perf_counter()
    for _ in range(depth):
        for w in range(len(actors)):
            submit(w)
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        w, t1 = pending.pop(ref)
        out = ray.get(ref)
        out["wall"] = time.perf_counter() - t1
        outs.append(out)
        submit(w)
    return sum(o["env_steps"] for o in outs) / (time.perf_counter() - t0), outs


def collection(env_id: str, rounds: int, tasks: int | None) -> dict[str, Any]:
    import ray
    from marlctl.envs import env_spec
    from marlctl.trainer.distributed.worker import RolloutWorkerActor, marlctl_version, policy_weights
    from marlctl.trainer.registry import algorithm_spec

    tasks = tasks or ENVS[env_id]["tasks"]
    cfg = config(env_id, VALUE_ALGO, 1000, "ray.address=local", "ray.rollout_workers=2")
    depth = cfg.ray.tasks_per_worker  # what training queues on a worker
    sections = cfg.to_dict()
    import torch

    learner = algorithm_spec(VALUE_ALGO).build(cfg, env_spec(env_id), torch.device("cpu"))
    box = [ray.put(policy_weights(learner, "value"))]
    learner.close()
    bare = RolloutWorkerActor(sections, 0, marlctl_version())
    remote = [ray.remote(RolloutWorkerActor).options(num_cpus=1).remote(sections, w, marlctl_version())
              for w in range(2)]
    ray.get([a.info.remote() for a in remote])
    bare.collect(box, 0, 0, 1.0)  # warm-up: JAX compile / engine start
    ray.get([a.collect.remote(box, 0, 0, 1.0) for a in remote])
    rows: dict[str, list[float]] = {"bare": [], "ray1": [], "ray1_one_at_a_time": [], "ray2": []}
    transfer_us, worker_s, sizes, episodes = [], [], [], []
    steps_per_round: dict[str, list[int]] = {"bare": [], "ray1": [], "ray1_one_at_a_time": []}
    def bare_arm(round_tasks: list[int]) -> tuple[float, int]:
        t0, steps = time.perf_counter(), 0
        for t in round_tasks:
            steps += bare.collect(box, 0, t, 1.0)["env_steps"]
        return steps / (time.perf_counter() - t0), steps

    def ray_arm(round_tasks: list[int], queued: int) -> tuple[float, int]:
        rate, outs = drive(ray, remote[:1], box, round_tasks, queued)
        if queued == 1:  # one call in flight: its wall time beyond the worker's own is the transfer
            for out in outs:
                n = len(out["returns"])
                transfer_us.append((out["wall"] - out["seconds"]) / n * 1e6)
                worker_s.append(out["seconds"] / n)
                sizes.append(len(pickle.dumps({k: v for k, v in out.items() if k != "wall"}, protocol=5)) / n)
                episodes.append(n)
        return rate, sum(o["env_steps"] for o in outs)

    arms = {"bare": bare_arm, "ray1": lambda ts: ray_arm(ts, depth), "ray1_one_at_a_time": lambda ts: ray_arm(ts, 1)}
    task = 1
    for i in range(rounds):
        # The bare loop and the Ray worker (both worker 0) play the same tasks, so the same seeded episodes:
        # their ratio is the cost of Ray alone, not of the episodes drawn (a GRF episode's cost varies a lot).
        # The arms' order flips every round (this machine's speed drifts by tens of % within seconds).
        round_tasks = list(range(task, task + tasks))
        task += tasks
        for arm in (list(arms) if i % 2 == 0 else list(arms)[::-1]):
            rate, steps = arms[arm](round_tasks)
            rows[arm].append(rate)
            steps_per_round[arm].append(steps)
        rows["ray2"].append(drive(ray, remote, box, list(range(task, task + 2 * tasks)), depth)[0])
        task += 2 * tasks
    for a in remote:
        ray.kill(a)
    bare.close()
    med = {k: statistics.median(v) for k, v in rows.items()}
    ep_sim_us = statistics.median(worker_s) * 1e6  # per episode at the worker's throughput

    def paired(arm: str) -> list[float]:  # paired rounds (same tasks in both arms): per-round ratios
        return [round(r / b, 3) for r, b in zip(rows[arm], rows["bare"], strict=True)]

    def median_ci(xs: list[float]) -> list[float]:  # bootstrap 95% interval of the median of rounds
        import numpy as np

        boot = np.median(np.random.default_rng(0).choice(xs, size=(4000, len(xs))), axis=1)
        return [round(float(q), 3) for q in np.percentile(boot, [2.5, 97.5])]

    return {
        "env_id": env_id, "num_envs": cfg.env.num_envs, "rounds": rounds, "tasks_per_round": tasks,
        "tasks_per_worker": depth, "bare_env_steps_per_s": round(med["bare"], 1),
        "ray1_env_steps_per_s": round(med["ray1"], 1),
        "ray1_one_at_a_time_env_steps_per_s": round(med["ray1_one_at_a_time"], 1),
        "ray2_env_steps_per_s": round(med["ray2"], 1),
        # The median of the per-round ratios; the ratio of the two medians is kept beside it.
        "ray1_over_bare": statistics.median(paired("ray1")), "ray1_over_bare_ci95": median_ci(paired("ray1")),
        "ray1_one_at_a_time_over_bare_ci95": median_ci(paired("ray1_one_at_a_time")),
        "ray1_over_bare_of_medians": round(med["ray1"] / med["bare"], 3),
        "ray1_one_at_a_time_over_bare": statistics.median(paired("ray1_one_at_a_time")),
        "ray2_over_ray1": round(med["ray2"] / med["ray1"], 3), "rounds_raw": rows,
        "env_steps_per_round": steps_per_round,
        "same_episodes": len({tuple(v) for v in steps_per_round.values()}) == 1,
        "ray1_over_bare_per_round": paired("ray1"),
        "ray1_one_at_a_time_over_bare_per_round": paired("ray1_one_at_a_time"),
        "transfer_bytes_per_episode": round(statistics.median(sizes)),
        "transfer_us_per_episode": round(statistics.median(transfer_us), 1),
        "episode_sim_us_at_worker_rate": round(ep_sim_us, 1),
        "transfer_over_sim": round(statistics.median(transfer_us) / ep_sim_us, 4),
        "episodes_per_task": statistics.median(episodes),
    }


# ------------------------------------------------------------------ learner ingest


class ReplayChunk:
    """Stand-in for the rollout in the ingest measurement: one real chunk of episodes, inserted again each call."""

    def __init__(self, arrays: dict[str, Any], res: Any) -> None:
        self.arrays, self.res = arrays, res

    def run_episodes(self, n, seed, epsilon, rng, sink=None):  # noqa: ANN001 - the RolloutWorker interface
        import numpy as np

        sink.insert(self.arrays, np.arange(len(self.arrays["filled"])))
        return self.res

    run_steps = None


def ingest(env_id: str, iterations: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from marlctl.envs import env_spec
    from marlctl.trainer.distributed.worker import EpisodeCapture, pad_episodes
    from marlctl.trainer.registry import algorithm_spec

    torch.set_num_threads(1)
    cfg = config(env_id, VALUE_ALGO, 10_000)
    spec = env_spec(env_id)
    algo = algorithm_spec(VALUE_ALGO).build(cfg, spec, torch.device("cpu"))
    cap = EpisodeCapture()
    res = algo.worker.run_episodes(cfg.env.num_envs, 0, 1.0, np.random.default_rng(0), sink=cap)
    chunk = pad_episodes(spec, spec.episode_limit, cap.arrays())
    algo.worker = ReplayChunk(chunk, res)
    while len(algo.buffer) < cfg.replay.batch_size:
        algo.train_iteration()
    t0 = time.perf_counter()
    steps = eps = updates = 0
    for _ in range(iterations):
        s = algo.train_iteration()
        steps, eps, updates = steps + s.env_steps, eps + s.episodes, updates + s.updates
    wall = time.perf_counter() - t0
    algo.close()
    return {"env_id": env_id, "algo": VALUE_ALGO, "num_envs": cfg.env.num_envs, "iterations": iterations,
            "updates_per_iteration": cfg.learner.updates_per_iteration, "wall_s": round(wall, 3),
            "episodes_per_s": round(eps / wall, 2), "env_steps_per_s": round(steps / wall, 1),
            "updates_per_s": round(updates / wall, 2)}


# ------------------------------------------------------------------ whole loop


def loop(env_id: str, workers: int, steps: int, runs: Path) -> dict[str, Any]:
    """One `marlctl train` process (a fresh interpreter per cell: no JAX or Ray state shared between cells)."""
    import shutil
    import subprocess

    run_dir = runs / f"loop_{env_id.replace(':', '_')}_w{workers}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "marlctl.cli.app", "train", "--algo", VALUE_ALGO, "--env", env_id, "--steps",
           str(steps), "--device", "cpu", "--out", str(run_dir)]
    for item in (f"env.num_envs={ENVS[env_id]['num_envs']}", "run.progress=false", "run.eval_interval=0",
                 "run.save_interval=0", "run.eval_episodes=4"):
        cmd += ["--set", item]
    if workers:
        cmd += ["--ray", "local", "--rollout-workers", str(workers)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    total = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    end = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()][-1]
    return {"env_id": env_id, "algo": VALUE_ALGO, "workers": workers, "env_steps": end["env_steps"],
            "wall_s": round(end["wall_s"], 2), "env_steps_per_s": round(end["env_steps_per_s"], 1),
            "updates": end["updates"], "startup_s": round(total - end["wall_s"], 1)}


# ------------------------------------------------------------------ parity


PARITY = {"matrix:tad10": 51_200, "hallway": 20_000}


def parity_cell(env_id: str, workers: int, seed: int, runs: Path) -> dict[str, Any]:
    from marlctl.trainer.config import load_config
    from marlctl.trainer.run import resume_run, train_run
    from rich.console import Console

    run_dir = runs / f"parity_{env_id.replace(':', '_')}_w{workers}_s{seed}"
    done = run_dir / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    base = load_config("tad-ppo", env_id, steps=PARITY[env_id], seed=seed, device="cpu")
    extra = ["run.progress=false"]
    if workers:
        extra += ["ray.address=local", f"ray.rollout_workers={workers}",
                  f"ray.envs_per_worker={base.env.num_envs // workers}"]  # the same envs per iteration
    cfg = load_config("tad-ppo", env_id, overrides=extra, steps=PARITY[env_id], seed=seed, device="cpu")
    quiet = Console(quiet=True)
    summary = (resume_run(run_dir, console=quiet) if (run_dir / "checkpoints" / "latest.pt").is_file()
               else train_run(cfg, run_dir, console=quiet))
    out = {"env_id": env_id, "workers": workers, "seed": seed, "env_steps": summary.env_steps,
           "eval_return": summary.last_eval.get("eval/return"),
           "eval_joint_return": summary.last_eval.get("eval/joint_return"), "wall_s": round(summary.wall_s, 1)}
    atomic_write_text(done, json.dumps(out, indent=2) + "\n")
    return out


# ------------------------------------------------------------------ the long GRF run


GRF_ENV = "grf:academy_3_vs_1_with_keeper,reward=scoring+checkpoints"


def grf_long(runs: Path, steps: int, workers: int, out_png: Path, run: bool) -> dict[str, Any]:
    """MAPPO with ``workers`` Ray workers on GRF (scoring + checkpoint rewards), resumable: ``run`` starts or
    resumes `marlctl train` (blocking; kill it any time, the next call resumes); the report reads its log."""
    import subprocess

    run_dir = runs / f"grf_mappo_{steps // 1000}k_w{workers}"
    if run:
        if (run_dir / "checkpoints" / "latest.pt").is_file():
            cmd = ["train", "--resume", str(run_dir)]
        else:
            cmd = ["train", "--algo", "mappo", "--env", GRF_ENV, "--steps", str(steps), "--device", "cpu", "--out",
                   str(run_dir), "--ray", "local", "--rollout-workers", str(workers), "--set", "run.progress=false",
                   "--set", "run.save_interval=20000", "--set", "run.eval_interval=20000"]
        subprocess.run([sys.executable, "-m", "marlctl.cli.app", *cmd], check=False)
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return {"run_dir": str(run_dir), "started": False}
    events = [json.loads(line) for line in log.read_text().splitlines()]
    evals = [(e["env_steps"], e.get("eval/return"), e.get("eval/win_rate")) for e in events if e["event"] == "eval"]
    last = max((e["env_steps"] for e in events), default=0)
    if evals:
        from marlctl.trainer.plot import plot_runs

        plot_runs([run_dir], out_png, title=f"MAPPO, {workers} Ray workers, {GRF_ENV}")
    end = next((e for e in reversed(events) if e["event"] == "end"), None)
    finished = end is not None and end["env_steps"] >= steps
    res = {"run_dir": str(run_dir), "started": True, "target_steps": steps, "env_steps": last, "finished": finished,
           "evals": [{"env_steps": s, "return": r, "win_rate": w} for s, r, w in evals], "png": out_png.name}
    if end is not None:
        res["last_segment"] = {k: end[k] for k in ("episodes", "updates", "wall_s", "env_steps_per_s") if k in end}
    if finished:
        res["exported_eval"] = grf_exported_eval(run_dir, GRF_EVAL_EPISODES)
    return res


GRF_EVAL_EPISODES = 100
GRF_EVAL_SEED = 100_000  # far from the seeds training and its in-run evaluations drew


def grf_exported_eval(run_dir: Path, episodes: int) -> dict[str, Any]:
    """The finished run's last checkpoint exported to ONNX (`marlctl export`, verified) and played by
    decentralized in-process ONNX Runtime agents (`marlctl eval`) for ``episodes`` episodes; cached in the run
    dir (``export/``, ``eval_<episodes>.json``), so a rerun only reads them."""
    import subprocess

    model, summary = run_dir / "export", run_dir / f"eval_{episodes}.json"
    cli = [sys.executable, "-m", "marlctl.cli.app"]
    if not (model / "manifest.json").is_file():
        subprocess.run([*cli, "export", str(run_dir), "--out", str(model)], check=True)
    if not summary.is_file():
        subprocess.run([*cli, "eval", str(model), "--episodes", str(episodes), "--seed", str(GRF_EVAL_SEED),
                        "--summary-json", str(summary)], check=True)
    s = json.loads(summary.read_text())
    return {"episodes": s["episodes"], "seed": GRF_EVAL_SEED, "wins": s["wins"], "win_rate": s["win_rate"],
            "win_rate_ci": s["win_rate_ci"], "mean_return": s["mean_return"], "return_ci": s["return_ci"],
            "aborted": s["aborted"], "command": f"marlctl export {run_dir} --out {model} && marlctl eval {model} "
                                                f"--episodes {episodes} --seed {GRF_EVAL_SEED}"}


# ------------------------------------------------------------------ model, report


def speedup_model(coll: dict[str, Any], ing: dict[str, Any], loops: list[dict[str, Any]]) -> dict[str, Any]:
    local = next(r for r in loops if r["workers"] == 0)["env_steps_per_s"]
    per_worker, ceiling = coll["ray1_env_steps_per_s"], ing["env_steps_per_s"]
    pred = {str(w): round(min(w * per_worker, ceiling) / local, 2) for w in W_MODEL}
    saturate = ceiling / per_worker
    return {"env_id": coll["env_id"], "local_loop_env_steps_per_s": local, "per_worker_env_steps_per_s": per_worker,
            "ingest_ceiling_env_steps_per_s": ceiling, "learner_saturates_at_workers": float(f"{saturate:.2g}"),
            "predicted_speedup": pred}


def plot(models: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m in models:
        ws = list(range(1, 65))
        ys = [min(w * m["per_worker_env_steps_per_s"], m["ingest_ceiling_env_steps_per_s"])
              / m["local_loop_env_steps_per_s"] for w in ws]
        ax.plot(ws, ys, label=f"{m['env_id']} (learner saturates at W={m['learner_saturates_at_workers']:g})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("worker nodes W")
    ax.set_ylabel("predicted speedup over one process")
    ax.set_title(f"{VALUE_ALGO}: min(W x worker rate, learner ingest) / local loop (model)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Ray rollout workers ({res['machine']})", "", "Commands, in order (each section keeps the figures of "
             "the command that measured it):", ""]
    lines += [f"- `{c}`" for c in res["commands"]] + [""]
    if res.get("collection"):
        lines += ["## Collection (one worker's task loop, median of rounds)", "",
                  "The Ray arm queues `ray.tasks_per_worker` calls on the worker, as training does; the one-at-a-time "
                  "arm waits for each call before the next (its wall time beyond the worker's own is the transfer "
                  "below). Each round plays the same seeded tasks in every arm.", "",
                  "| env | envs/worker | tasks/round | bare env-steps/s | 1 Ray worker | ratio: median of rounds "
                  "(target >= 0.9) | 95% CI (bootstrap) | per-round ratios | one call at a time: ratio (95% CI) "
                  "| same episodes | 2 Ray workers | 2/1 |",
                  "|---|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|"]
        for c in res["collection"]:
            per_round = ", ".join(f"{x:.2f}" for x in c.get("ray1_over_bare_per_round", []))
            same = {True: "yes", False: "no"}.get(c.get("same_episodes"), "-")
            one, one_ci = c.get("ray1_one_at_a_time_over_bare"), c.get("ray1_one_at_a_time_over_bare_ci95")
            depth, ci = c.get("tasks_per_worker", 1), c.get("ray1_over_bare_ci95")
            lines.append(f"| {c['env_id']} | {c['num_envs']} | {c['tasks_per_round']} | "
                         f"{c['bare_env_steps_per_s']:,.0f} | {c['ray1_env_steps_per_s']:,.0f} ({depth} queued) | "
                         f"{c['ray1_over_bare']:.2f} | {'-' if not ci else f'{ci[0]:.2f} .. {ci[1]:.2f}'} | "
                         f"{per_round or '-'} | {'-' if one is None else f'{one:.2f}'}"
                         f"{f' ({one_ci[0]:.2f} .. {one_ci[1]:.2f})' if one_ci else ''} | {same} | "
                         f"{c['ray2_env_steps_per_s']:,.0f} | {c['ray2_over_ray1']:.2f} |")
        lines += ["", "## Transfer per episode (worker -> learner)", "",
                  "| env | bytes | us beyond collection | episode sim us at worker rate | fraction (target <= 0.05) |",
                  "|---|---:|---:|---:|---:|"]
        for c in res["collection"]:
            lines.append(f"| {c['env_id']} | {c['transfer_bytes_per_episode']:,} | {c['transfer_us_per_episode']:,.0f} | "
                         f"{c['episode_sim_us_at_worker_rate']:,.0f} | {c['transfer_over_sim']:.3f} |")
    if res.get("ingest"):
        lines += ["", f"## Learner ingest ceiling ({VALUE_ALGO}, collection free)", "",
                  "| env | envs/chunk | updates/iteration | episodes/s | env-steps/s | updates/s |", "|---|---:|---:|---:|---:|---:|"]
        for i in res["ingest"]:
            lines.append(f"| {i['env_id']} | {i['num_envs']} | {i['updates_per_iteration']} | {i['episodes_per_s']:,.1f} | "
                         f"{i['env_steps_per_s']:,.0f} | {i['updates_per_s']:,.1f} |")
    if res.get("loop"):
        lines += ["", f"## Whole training loop ({VALUE_ALGO}; wall excludes start-up)", "",
                  "| env | path | env steps | wall s | env-steps/s | start-up s |", "|---|---|---:|---:|---:|---:|"]
        for r in res["loop"]:
            path = "one process" if r["workers"] == 0 else f"{r['workers']} Ray worker(s)"
            lines.append(f"| {r['env_id']} | {path} | {r['env_steps']:,} | {r['wall_s']} | {r['env_steps_per_s']:,.0f} | "
                         f"{r['startup_s']} |")
    if res.get("model"):
        lines += ["", "## Predicted speedup for W worker nodes (a model from the rates above, not a measurement)", "",
                  "| env | " + " | ".join(f"W={w}" for w in W_MODEL) + " | learner saturates at W |",
                  "|---|" + "---:|" * (len(W_MODEL) + 1)]
        for m in res["model"]:
            lines.append(f"| {m['env_id']} | " + " | ".join(f"{m['predicted_speedup'][str(w)]:g}x" for w in W_MODEL)
                         + f" | {m['learner_saturates_at_workers']:g} |")
        lines += ["", "![speedup model](distributed.png)"]
    if res.get("parity"):
        lines += ["", "## Learning parity (TAD-PPO, packaged configs, same total envs per iteration)", "",
                  "| env | env steps | seed | path | eval return (decentralized) | eval return (joint) | wall s |",
                  "|---|---:|---:|---|---:|---:|---:|"]
        for p in res["parity"]:
            path = "one process" if p["workers"] == 0 else f"{p['workers']} Ray workers"
            lines.append(f"| {p['env_id']} | {p['env_steps']:,} | {p['seed']} | {path} | {p['eval_return']:g} | "
                         f"{p['eval_joint_return']:g} | {p['wall_s']} |")
    g = res.get("grf")
    if g and g.get("started"):
        lines += ["", f"## GRF learning run with Ray workers (MAPPO, `{GRF_ENV}`)", "",
                  f"Run dir `{g['run_dir']}`: {g['env_steps']:,} of {g['target_steps']:,} env steps"
                  f"{' (finished)' if g['finished'] else ' (not finished; `--sections grf` resumes it)'}"
                  + (f"; the last `marlctl train` segment ran {g['last_segment']['wall_s']:,.0f} s at "
                     f"{g['last_segment']['env_steps_per_s']:.0f} env-steps/s" if g.get("last_segment") else "")
                  + ". Evaluation every 20k steps: 16 greedy episodes on the Ray workers.", ""]
        x = g.get("exported_eval")
        if x:
            first = next((e["env_steps"] for e in g["evals"] if e["win_rate"]), None)
            won = f"first in-run evaluation with a win at {first:,} env steps" if first else "no in-run evaluation won"
            lines += [f"**The exported team** (last checkpoint -> verified ONNX, decentralized in-process ONNX "
                      f"Runtime agents, {x['episodes']} episodes from seed {x['seed']}): win rate "
                      f"**{x['win_rate']:.2f}** (95% Wilson CI {x['win_rate_ci'][0]:.2f} .. {x['win_rate_ci'][1]:.2f}; "
                      f"{x['wins']} wins, {x['aborted']} aborted), mean return {x['mean_return']:.2f} (95% CI "
                      f"{x['return_ci'][0]:.2f} .. {x['return_ci'][1]:.2f}); {won}.", "", f"    {x['command']}", ""]
        if g["evals"]:
            lines += ["| env steps | eval return | eval win rate |", "|---:|---:|---:|"]
            lines += [f"| {e['env_steps']:,} | {e['return']:.3g} | {e['win_rate']:.3g} |" for e in g["evals"]]
            lines += ["", f"![GRF curve]({g.get('png', 'distributed_grf.png')})"]
    return "\n".join(lines) + "\n"


def merge(old: list[dict[str, Any]] | None, new: list[dict[str, Any]], keys: tuple[str, ...] = ("env_id",)) -> list:
    """Rows of an earlier run of this section replaced by this run's rows of the same cell (others kept)."""
    fresh = {tuple(r[k] for k in keys) for r in new}
    return [r for r in old or [] if tuple(r[k] for k in keys) not in fresh] + new


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/distributed"))
    ap.add_argument("--runs", type=Path, default=Path("runs/bench_distributed"))
    ap.add_argument("--sections", nargs="+", default=["collection", "ingest", "loop", "model", "parity"])
    ap.add_argument("--envs", nargs="+", default=list(ENVS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=None,
                    help="Worker tasks per collection round and arm (default: per env, about 2 s of smax:3m).")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args(argv)
    import ray

    previous = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").is_file() else {}
    command = " ".join([Path(sys.executable).name, *sys.argv])
    earlier = previous.get("commands", [previous["command"]] if "command" in previous else [])
    previous.pop("command", None)
    res: dict[str, Any] = {**previous, "commands": [*earlier, f"{command}  (load average {os.getloadavg()[0]:.1f})"],
                           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                           "load_average": round(os.getloadavg()[0], 1)}
    args.runs.mkdir(parents=True, exist_ok=True)
    if {"collection", "ingest"} & set(args.sections):
        from marlctl.trainer.distributed.cluster import local_workers_at_normal_priority

        local_workers_at_normal_priority()  # as `marlctl train --ray local` starts its workers
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        if "collection" in args.sections:
            res["collection"] = merge(res.get("collection"), [collection(e, args.rounds, args.tasks) for e in args.envs])
        if "ingest" in args.sections:
            res["ingest"] = merge(res.get("ingest"), [ingest(e, 30 if e.startswith("smax") else 60) for e in args.envs])
        ray.shutdown()
    if "loop" in args.sections:
        res["loop"] = merge(res.get("loop"), [loop(e, w, ENVS[e]["loop_steps"], args.runs) for e in args.envs
                                              for w in (0, 1, 2)], keys=("env_id", "workers"))
    if "model" in args.sections and res.get("collection") and res.get("ingest") and res.get("loop"):
        res["model"] = [speedup_model(c, next(i for i in res["ingest"] if i["env_id"] == c["env_id"]),
                                      [r for r in res["loop"] if r["env_id"] == c["env_id"]])
                        for c in res["collection"]]
        plot(res["model"], args.out.with_suffix(".png"))
    if {"grf", "grf-report"} & set(args.sections):
        res["grf"] = grf_long(args.runs, 2_000_000, 2, args.out.with_name(args.out.name + "_grf.png"),
                              run="grf" in args.sections)
    if "parity" in args.sections:
        res["parity"] = [parity_cell(e, w, s, args.runs) for e in PARITY for s in args.seeds for w in (0, 2)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(res, indent=2, default=str) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
