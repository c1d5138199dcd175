"""Win rate vs env steps of every algorithm on one SMAX map at one stated budget: JSON + Markdown + PNG.

Each algorithm is trained with ``marlctl train``'s own entry point (same config layers, real run dirs under
``--runs``), evaluated greedily every ``--eval-interval`` env steps; the eval points of each run's
``log.jsonl`` are collected into one table and one learning-curve figure (``marlctl plot``).

    python bench/smax_learning.py --env smax:3m --steps 50000 --out bench/results/smax_learning
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from marlctl.agents.files import atomic_write_text


def eval_points(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "eval":
            out.append({"env_steps": rec["env_steps"], "win_rate": rec.get("eval/win_rate"),
                        "return": rec.get("eval/return")})
    return out


def main(argv: list[str] | None = None) -> int:
    from marlctl.trainer.config import load_config
    from marlctl.trainer.plot import plot_runs
    from marlctl.trainer.registry import ALGORITHMS
    from marlctl.trainer.run import train_run
    from rich.console import Console

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="smax:3m")
    ap.add_argument("--algos", default=",".join(sorted(ALGORITHMS)))
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--eval-interval", type=int, default=10_000)
    ap.add_argument("--eval-episodes", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    ap.add_argument("--runs", default="/tmp/marlctl_smax_learning", help="where the run dirs go (replaced)")
    ap.add_argument("--out", default="bench/results/smax_learning", help="path prefix of .json/.md/.png")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    console = Console(stderr=True)
    rows = []
    for algo in args.algos.split(","):
        run_dir = runs / algo
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        try:
            cfg = load_config(algo, args.env, overrides=[
                f"run.eval_interval={args.eval_interval}", f"run.eval_episodes={args.eval_episodes}",
                "run.progress=false", "run.checkpoint_buffer=false", *args.overrides],
                steps=args.steps, seed=args.seed, device=args.device)
            summary = train_run(cfg, run_dir, console=console)
            row = {"algo": algo, "env_id": args.env, "env_steps": summary.env_steps, "updates": summary.updates,
                   "wall_s": round(time.perf_counter() - t0, 1), "curve": eval_points(run_dir),
                   "final_win_rate": summary.last_eval.get("eval/win_rate"),
                   "final_return": summary.last_eval.get("eval/return"), "run_dir": str(run_dir)}
        except Exception as exc:  # noqa: BLE001 - one failing algorithm must not hide the others
            row = {"algo": algo, "env_id": args.env, "error": f"{type(exc).__name__}: {exc}"[:200]}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"env": args.env, "steps": args.steps, "eval_interval": args.eval_interval,
            "eval_episodes": args.eval_episodes, "seed": args.seed, "overrides": args.overrides,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count()}
    md = [f"# Win rate vs env steps on {args.env} (budget {args.steps:,} env steps, seed {args.seed})", "",
          f"Greedy evaluation every {args.eval_interval:,} steps over {args.eval_episodes} episodes; "
          f"config = algorithm/env defaults plus `{' '.join(args.overrides) or '(none)'}`.", "",
          "| algo | final win rate | final return | updates | wall s | win rate at eval points |",
          "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['algo']} | error: {r['error']} | | | | |")
            continue
        pts = ", ".join(f"{p['env_steps'] // 1000}k: {p['win_rate']:.2f}" for p in r["curve"]
                        if p["win_rate"] is not None)
        md.append(f"| {r['algo']} | {r['final_win_rate']:.3f} | {r['final_return']:.3f} | {r['updates']} | "
                  f"{r['wall_s']} | {pts} |")
    for suffix, text in ((".json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"),
                         (".md", "\n".join(md) + "\n")):
        atomic_write_text(out.with_name(out.name + suffix), text)
    ok = [Path(r["run_dir"]) for r in rows if "error" not in r]
    if ok:
        plot_runs(ok, out.with_name(out.name + ".png"), title=f"{args.env}, {args.steps:,} env steps")
    print("\n".join(md))
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
