"""Environment throughput: env-steps/s of every backend, single and batched, against a bare jaxmarl loop.

Each case builds the env through the registry (``make_env`` / ``make_batched_env``), runs untimed warm-up
steps (JAX compiles, engines start), then times ``--repeats`` runs of uniformly random available actions
(drawn with NumPy, as a rollout would) and reports the median env-steps/s (one env-step = one environment
advancing one step; a batched step of B envs counts B). The baseline, in the same run, is a bare jitted,
vmapped jaxmarl ``HeuristicEnemySMAX`` 3m loop: one jitted call per step that samples random available
actions on device and calls jaxmarl's own ``step`` (with its auto-reset), nothing handed to NumPy.

    python bench/envs.py --out bench/results/envs            # writes envs.json and envs.md
    python bench/envs.py --quick                             # fewer cases, for a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from marlctl.agents.files import atomic_write_text
from marlctl.envs.vector import random_actions

BASELINE = "jaxmarl bare vmapped smax 3m"


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    env_id: str
    """Registry id."""
    num_envs: int
    """B; 0 means the single-env API (``make_env``)."""
    steps: int
    """Timed steps per repeat (batched steps; each counts ``num_envs`` env-steps)."""


def cases(quick: bool) -> list[Case]:
    smax = [Case("smax:3m", 0, 200), Case("smax:3m", 1, 200), Case("smax:3m", 64, 100), Case("smax:3m", 512, 30)]
    if not quick:
        smax += [Case("smax:8m", 512, 20), Case("smax:27m_vs_30m", 64, 10)]
    grf = [Case("grf:academy_3_vs_1_with_keeper", 0, 200), Case("grf:academy_3_vs_1_with_keeper", 2, 150)]
    games = []
    for env_id in ("matrix:qtran", "predator_prey:agents=2,prey=1,grid=5,punishment=0.5", "gaussian_squeeze:domains=2",
                   "hallway"):
        games += [Case(env_id, 0, 2000), Case(env_id, 512, 200)]
        if quick:
            break
    return smax + grf + games




def measure_case(case: Case, repeats: int, warmup: int) -> dict[str, Any]:
    from marlctl.envs import make_batched_env, make_env

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    single = case.num_envs == 0
    env: Any = make_env(case.env_id) if single else make_batched_env(case.env_id, case.num_envs)
    try:
        ts = env.reset(0)
        per_step = 1 if single else case.num_envs

        def run(n: int) -> None:
            nonlocal ts
            for _ in range(n):
                ts = env.step(random_actions(ts.avail, rng))
                if single and ts.done:
                    ts = env.reset(None)

        run(warmup)
        setup_s = time.perf_counter() - t0
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(case.steps)
            rates.append(case.steps * per_step / (time.perf_counter() - start))
    finally:
        env.close()
    return {"env_steps_per_s": statistics.median(rates), "repeats": rates, "setup_s": setup_s}


def measure_baseline(num_envs: int, steps: int, repeats: int) -> dict[str, Any]:
    """Bare jaxmarl: one jitted call per step = random available actions + vmapped ``env.step``."""
    import jax
    import jax.numpy as jnp
    from marlctl.envs.smax import _import_jax

    _, _, heuristic_enemy_smax, map_name_to_scenario = _import_jax()
    env = heuristic_enemy_smax(scenario=map_name_to_scenario("3m"))
    agents = env.agents

    def one(key: Any, state: Any, acts_N: Any) -> Any:
        return env.step(key, state, {a: acts_N[i] for i, a in enumerate(agents)})

    @jax.jit
    def step(key: Any, state: Any) -> Any:
        key, k_act, k_step = jax.random.split(key, 3)
        avail = jax.vmap(env.get_avail_actions)(state)
        avail_BNA = jnp.stack([avail[a] for a in agents], axis=1)
        acts_BN = jax.random.categorical(k_act, jnp.where(avail_BNA > 0, 0.0, -1e9))
        obs, state, reward, done, _ = jax.vmap(one)(jax.random.split(k_step, num_envs), state, acts_BN)
        return key, state, obs, reward, done

    t0 = time.perf_counter()
    key = jax.random.PRNGKey(0)
    _, state = jax.vmap(env.reset)(jax.random.split(key, num_envs))
    for _ in range(3):
        key, state, obs, _, _ = step(key, state)
    jax.block_until_ready(obs)
    setup_s = time.perf_counter() - t0
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            key, state, obs, _, _ = step(key, state)
            jax.block_until_ready(obs)
        rates.append(steps * num_envs / (time.perf_counter() - start))
    return {"env_steps_per_s": statistics.median(rates), "repeats": rates, "setup_s": setup_s}


def to_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    base = {r["num_envs"]: r["env_steps_per_s"] for r in rows if r["name"] == BASELINE and "env_steps_per_s" in r}
    ref = base.get(512) or next(iter(base.values()), None)
    lines = [
        "# Environment throughput",
        "",
        f"{meta['when']} on {meta['machine']} ({meta['cpus']} CPUs, load avg at start {meta['load']}); "
        f"median of {meta['repeats']} repeats, random available actions.",
        "Ratio (SMAX rows) = this row / the bare jaxmarl 3m loop at the same B (B=512 for rows of other B).",
        "",
        "| env | API | B | env-steps/s | ratio to bare jaxmarl | setup s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        api = "baseline" if r["name"] == BASELINE else ("single" if r["num_envs"] == 0 else "batched")
        b = max(r["num_envs"], 1)
        if "error" in r:
            lines.append(f"| {r['name']} | {api} | {b} | error: {r['error']} | | |")
            continue
        ref_b = base.get(r["num_envs"], ref)
        ratio = f"{r['env_steps_per_s'] / ref_b:.2f}" if ref_b and r["name"].startswith("smax:") else ""
        lines.append(f"| {r['name']} | {api} | {b} | {r['env_steps_per_s']:,.0f} | {ratio} | {r['setup_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/envs", help="output path without extension")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer cases")
    args = parser.parse_args(argv)

    rows: list[dict[str, Any]] = []
    for num_envs, steps in ((64, 100), (512, 30)):
        try:
            rows.append({"name": BASELINE, "num_envs": num_envs, **measure_baseline(num_envs, steps, args.repeats)})
        except Exception as exc:  # noqa: BLE001 - a missing backend is a row, not a crash
            rows.append({"name": BASELINE, "num_envs": num_envs, "error": f"{type(exc).__name__}: {exc}"})
        print(rows[-1], flush=True)
    for case in cases(args.quick):
        try:
            rows.append({"name": case.env_id, "num_envs": case.num_envs,
                         **measure_case(case, args.repeats, args.warmup)})
        except Exception as exc:  # noqa: BLE001 - a missing backend is a row, not a crash
            traceback.print_exc()
            rows.append({"name": case.env_id, "num_envs": case.num_envs, "error": f"{type(exc).__name__}: {exc}"})
        print(rows[-1], flush=True)

    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load": round(os.getloadavg()[0], 2),
        "repeats": args.repeats,
        "python": sys.version.split()[0],
    }
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=2))
    atomic_write_text(out.with_suffix(".md"), to_markdown(rows, meta))
    print(to_markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
