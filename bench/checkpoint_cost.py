"""What a checkpoint costs at the SMAX defaults: bytes on disk and seconds per save, against the time between saves.

Builds ``qmix`` on a SMAX map exactly as ``marlctl train`` does (packaged layers: 64 envs, save every 200k
env steps, a 5000-episode replay), measures the training loop's env-steps/s over a few iterations after
learning starts, fills the replay to capacity with the episodes it collected (repeated: the write cost
depends on the bytes, not on what they hold), then times

* the current save (``TrainingRun.save_checkpoint``: ``step_<n>.pt`` + ``latest.pt`` without the buffer and
  one ``replay_<n>.npz`` snapshot), and
* the previous format, measured in the same run as the baseline: the buffer pickled into every
  ``step_<n>.pt`` and ``latest.pt`` through ``torch.save`` (``ReplayBuffer.state_dict``).

Target (issue 14): a save costs <= 10% of the time between saves, and a run dir holds at most one snapshot.

    python bench/checkpoint_cost.py --env smax:3m --out bench/results/checkpoints
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from marlctl.agents.files import atomic_write_bytes, atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="smax:3m")
    ap.add_argument("--algo", default="qmix")
    ap.add_argument("--iterations", type=int, default=6, help="timed training iterations (after learning starts)")
    ap.add_argument("--repeat", type=int, default=3, help="saves timed per format (median reported)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/checkpoints"))
    args = ap.parse_args()

    import numpy as np
    import torch
    from marlctl.envs import env_spec
    from marlctl.trainer.config import load_config
    from marlctl.trainer.run import TrainingRun
    from rich.console import Console

    torch.set_num_threads(1)
    cfg = load_config(args.algo, args.env, overrides=["run.progress=false"], seed=0, device="cpu")
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        run = TrainingRun(cfg, Path(tmp), env_spec(args.env), Console(quiet=True))
        algo = run.algo
        while algo.train_iteration().updates == 0:  # fill to learning_starts (also compiles the batched env)
            pass
        t0, steps = time.perf_counter(), 0
        for _ in range(args.iterations):
            steps += algo.train_iteration().env_steps
        rate = steps / (time.perf_counter() - t0)
        buffer = algo.buffer
        have = buffer.size
        while buffer.size < buffer.capacity:  # the collected episodes again, up to capacity
            rows = np.arange(min(have, buffer.capacity - buffer.size))
            buffer.insert({k: v[rows] for k, v in buffer.arrays.data.items()}, rows)
        run.state.env_steps = cfg.run.save_interval
        new_s, sizes = [], {}
        for _ in range(args.repeat):
            run.state.env_steps += cfg.run.save_interval
            t = time.perf_counter()
            run.save_checkpoint()
            new_s.append(time.perf_counter() - t)
            ckpt = Path(tmp) / "checkpoints"
            sizes = {"step_pt": (ckpt / f"step_{run.state.env_steps}.pt").stat().st_size,
                     "replay_npz": sum(p.stat().st_size for p in ckpt.glob("replay_*.npz")),
                     "replay_files": len(list(ckpt.glob("replay_*.npz")))}
        old_s, old_size = [], 0
        for i in range(args.repeat):  # baseline: the buffer inside every checkpoint, twice per save
            t = time.perf_counter()
            state = run.checkpoint_dict()
            state["algorithm"]["buffer"] = buffer.state_dict()
            buf = io.BytesIO()
            torch.save(state, buf)
            data = buf.getvalue()
            atomic_write_bytes(Path(tmp) / f"old_step_{i}.pt", data)
            atomic_write_bytes(Path(tmp) / "old_latest.pt", data)
            old_s.append(time.perf_counter() - t)
            old_size = len(data)
        run.close()

    between_s = cfg.run.save_interval / rate
    new_med, old_med = statistics.median(new_s), statistics.median(old_s)
    result = {
        "algo": args.algo, "env": args.env, "machine": platform.processor() or platform.machine(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "save_interval_env_steps": cfg.run.save_interval, "replay_capacity_episodes": buffer.capacity,
        "train_env_steps_per_s": round(rate, 1), "seconds_between_saves": round(between_s, 1),
        "save_s_median": round(new_med, 3), "save_s_all": [round(x, 3) for x in new_s],
        "save_share_of_interval": round(new_med / between_s, 4),
        "step_checkpoint_bytes": sizes["step_pt"], "replay_snapshot_bytes": sizes["replay_npz"],
        "replay_snapshots_in_run_dir": sizes["replay_files"],
        "baseline_buffer_in_every_checkpoint_save_s_median": round(old_med, 3),
        "baseline_checkpoint_bytes": old_size,
        "target_met": new_med / between_s <= 0.10 and sizes["replay_files"] == 1,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    mb = 1e6
    md = [
        f"# Checkpoint cost: {args.algo} on {args.env} at the packaged defaults", "",
        f"`python bench/checkpoint_cost.py --env {args.env} --algo {args.algo}` (medians of {args.repeat} saves; "
        "the baseline is measured in the same run)", "",
        "| | this format | baseline: buffer in every checkpoint |", "|---|---:|---:|",
        f"| bytes per step checkpoint | {sizes['step_pt'] / mb:.1f} MB | {old_size / mb:.1f} MB |",
        f"| replay snapshots in the run dir | {sizes['replay_files']} ({sizes['replay_npz'] / mb:.0f} MB) | "
        f"one per kept checkpoint + latest.pt |",
        f"| seconds per save | {new_med:.2f} | {old_med:.2f} |",
        f"| share of the {between_s:.0f} s between saves ({cfg.run.save_interval:,} steps at "
        f"{rate:,.0f} env-steps/s) | {100 * new_med / between_s:.1f}% | {100 * old_med / between_s:.1f}% |", "",
        f"Target (save <= 10% of the interval, one snapshot): {'met' if result['target_met'] else 'MISSED'}. "
        f"Machine load (1 min) at the end: {result['load_average_1m_at_end']} on {os.cpu_count()} cores: both the "
        "training rate and the write speed fall with it, so the share is what matters, not the seconds.",
    ]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
