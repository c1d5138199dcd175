"""Scripted reference teams on SMAX maps: how hard is a map against jaxmarl's heuristic enemy?

A learned win rate means more next to what a hand-written team gets on the same map and limit. Each policy
below plays the allied units of ``HeuristicEnemySMAX`` (the enemy ``smax:<map>`` uses, ``attack_mode``
closest) for ``--episodes`` episodes per map in one jitted, vmapped scan, with SMAC's per-map episode limit
(``smax:<map>,smac=1``; the reward does not matter here, only who wins):

- ``random``: a uniformly random available action per agent (the floor).
- ``focus_first``: every agent attacks the alive enemy of lowest index, walking straight at it while it is
  out of range.
- ``focus_lowest``: the same on the alive enemy with the least health (focus fire on the weakest).
- ``focus_lowest_in_range``: the weakest enemy in the agent's own range when there is one, else walk at the
  team's weakest enemy.

Writes ``--out``.json and .md: win rate (with a 95% Wilson interval), time-outs and mean episode length.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

POLICIES = ("random", "focus_first", "focus_lowest", "focus_lowest_in_range")


def play(map_name: str, limit: int, policy: str, episodes: int, seed: int) -> dict[str, Any]:
    """Win rate, time-out rate and mean length of one scripted ally policy on one map."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from marlctl.envs.smax import _import_jax
    from marlctl.serving.stats import wilson_interval

    _, _, heuristic_enemy_smax, map_name_to_scenario = _import_jax()
    env = heuristic_enemy_smax(scenario=map_name_to_scenario(map_name), max_steps=limit, attack_mode="closest")
    n_allies, n_moves, agents = env.num_allies, env.num_movement_actions, list(env.agents)
    stop = n_moves - 1  # jaxmarl: moves 0 up, 1 right, 2 down, 3 left, 4 stop; then one attack per enemy

    def act(env_state: Any, avail: dict[str, Any], key: Any) -> dict[str, Any]:
        s = env_state.state
        enemy_alive = s.unit_alive[n_allies:]
        enemy_hp = jnp.where(enemy_alive, s.unit_health[n_allies:], jnp.inf)
        team_target = jnp.argmax(enemy_alive) if policy == "focus_first" else jnp.argmin(enemy_hp)
        out = {}
        for i, (a, k) in enumerate(zip(agents, jax.random.split(key, n_allies), strict=True)):
            av = avail[a].astype(bool)
            if policy == "random":
                out[a] = jax.random.choice(k, av.shape[0], p=av / av.sum())
                continue
            target = team_target
            if policy == "focus_lowest_in_range":
                in_range_hp = jnp.where(av[n_moves:], enemy_hp, jnp.inf)
                target = jnp.where(jnp.isfinite(in_range_hp.min()), jnp.argmin(in_range_hp), team_target)
            d = s.unit_positions[n_allies + target] - s.unit_positions[i]
            move = jnp.where(jnp.abs(d[0]) > jnp.abs(d[1]), jnp.where(d[0] > 0, 1, 3), jnp.where(d[1] > 0, 0, 2))
            move = jnp.where(av[move], move, stop)
            out[a] = jnp.where(av[n_moves + target], n_moves + target, move)
        return out

    def episode(key: Any) -> tuple[Any, Any, Any]:
        k_reset, key = jax.random.split(key)
        obs, env_state = env.reset(k_reset)

        def body(carry: Any, _: Any) -> tuple[Any, None]:
            env_state, key, done, won, length = carry
            key, k_act, k_step = jax.random.split(key, 3)
            _, nxt, _, _, _ = env.step_env(k_step, env_state, act(env_state, env.get_avail_actions(env_state), k_act))
            alive = nxt.state.unit_alive
            allies, enemies = alive[:n_allies].any(), alive[n_allies:].any()
            ended = ~allies | ~enemies | (nxt.state.step >= limit)
            won = jnp.where(done, won, allies & ~enemies)
            length = jnp.where(done, length, length + 1)
            env_state = jax.tree_util.tree_map(lambda old, new: jnp.where(done, old, new), env_state, nxt)
            return (env_state, key, done | ended, won, length), None

        init = (env_state, key, jnp.bool_(False), jnp.bool_(False), jnp.int32(0))
        (env_state, _, _, won, length), _ = jax.lax.scan(body, init, None, length=limit)
        alive = env_state.state.unit_alive
        return won, alive[:n_allies].any() & alive[n_allies:].any(), length

    t0 = time.perf_counter()
    keys = jax.random.split(jax.random.PRNGKey(seed), episodes)
    won, timed_out, length = (np.asarray(x) for x in jax.jit(jax.vmap(episode))(keys))
    wins = int(won.sum())
    return {"map": map_name, "limit": limit, "policy": policy, "episodes": episodes, "seed": seed,
            "win_rate": wins / episodes, "win_rate_ci95": wilson_interval(wins, episodes),
            "timeout_rate": float(timed_out.mean()), "mean_length": float(length.mean()),
            "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    from marlctl.agents.files import atomic_write_text
    from marlctl.envs.smax import MAPS, SMAC_LIMITS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", default="3m,2s3z,5m_vs_6m,3s_vs_5z")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--episodes", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/smax_scripted")
    args = ap.parse_args(argv)
    maps, policies = args.maps.split(","), args.policies.split(",")
    bad_maps = [m for m in maps if m not in SMAC_LIMITS]
    bad_policies = [p for p in policies if p not in POLICIES]
    if bad_maps:
        ap.error(f"--maps {bad_maps}: no SMAC episode limit for them; valid: "
                 f"{', '.join(m for m in MAPS if m in SMAC_LIMITS)}")
    if bad_policies:
        ap.error(f"--policies {bad_policies}; valid: {', '.join(POLICIES)}")
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
    rows = []
    for m in maps:
        for p in policies:
            rows.append(play(m, SMAC_LIMITS[m], p, args.episodes, args.seed))
            r = rows[-1]
            print(f"{m:10s} {p:22s} win {r['win_rate']:.3f}  time-out {r['timeout_rate']:.3f}  "
                  f"length {r['mean_length']:.1f}", flush=True)
    meta = {"argv": sys.argv[1:] if argv is None else argv, "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    md = ["# Scripted ally teams against jaxmarl's heuristic enemy (SMAC episode limits)", "",
          f"Command: `python bench/smax_scripted.py {' '.join(meta['argv'])}`; {args.episodes} episodes per cell, "
          f"seed {args.seed}. Win rate [95% Wilson interval]; a time-out is an episode that hit the limit with "
          "both teams alive. Policies: see the module docstring of `bench/smax_scripted.py`.", "",
          "| map | limit | policy | win rate | time-outs | mean length |", "|---|---:|---|---|---:|---:|"]
    for r in rows:
        lo, hi = r["win_rate_ci95"]
        md.append(f"| {r['map']} | {r['limit']} | {r['policy']} | {r['win_rate']:.2f} [{lo:.2f}, {hi:.2f}] | "
                  f"{r['timeout_rate']:.2f} | {r['mean_length']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_name(out.name + ".json"), json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    atomic_write_text(out.with_name(out.name + ".md"), "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
