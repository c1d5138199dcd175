"""Where a TAD-PPO run's distillation gap lies, read from its finished checkpoints: JSON + Markdown.

For each run directory, greedy episodes (the run's own eval protocol, ``--episodes`` of them) of:

- ``decentralized``: TAD-PPO, the distilled actors (what is exported and served);
- ``joint``: TAD-PPO-T, the coordination policy, agent ``i`` seeing the greedy ``a_<i``;
- ``joint, a_<i = 0`` / ``random`` / ``decentralized``: the coordination policy with what it sees of the
  preceding agents replaced by zeros, by uniformly random available actions, or by the distilled actors'
  own greedy choices. Each agent's choice then depends on its own history only, so it is a decentralized
  policy: if these win like ``joint`` does, the gap is not information the distilled actors lack.

and, on every step of those episodes, how often the distilled actor's greedy action equals the coordination
policy's (alive agents). Usage::

    .venv/bin/python bench/tad_gap.py RUN_DIR [RUN_DIR ...] --out bench/results/tad_gap_3s_vs_5z
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from marlctl.agents.files import atomic_write_text
from marlctl.agents.recurrent import masked_greedy
from marlctl.envs import env_spec
from marlctl.trainer.ppo.networks import masked_logits
from marlctl.trainer.registry import algorithm_spec
from marlctl.trainer.run import load_run_config

MODES = ("decentralized", "joint", "joint_ctx_zero", "joint_ctx_random", "joint_ctx_decentralized")
LABELS = {"decentralized": "TAD-PPO (distilled)", "joint": "TAD-PPO-T (joint)", "joint_ctx_zero": "joint, a_<i = 0",
          "joint_ctx_random": "joint, a_<i random", "joint_ctx_decentralized": "joint, a_<i = distilled"}


def probe(run_dir: Path, episodes: int, checkpoint: str) -> dict[str, Any]:
    cfg = load_run_config(run_dir)
    if cfg.run.algo != "tad-ppo":
        raise SystemExit(f"{run_dir} is a {cfg.run.algo} run; this bench reads TAD-PPO runs")
    spec = env_spec(cfg.env.env_id)
    algo = algorithm_spec("tad-ppo").build(cfg, spec, torch.device("cpu"))
    ckpt = torch.load(run_dir / "checkpoints" / checkpoint, map_location="cpu", weights_only=False)
    algo.load_state_dict(ckpt["algorithm"])
    algo.actor.eval()
    gen = torch.Generator().manual_seed(0)
    agree: list[torch.Tensor] = []

    def coordination(h_BNH: torch.Tensor, avail_BNA: torch.Tensor, seen_BN: torch.Tensor | None) -> torch.Tensor:
        acts = torch.zeros(h_BNH.shape[:2], dtype=torch.int64)
        for i in range(algo.N):
            ctx = acts[:, :i] if seen_BN is None else seen_BN[:, :i]
            acts[:, i] = masked_logits(algo.actor.coord_logits_agent(h_BNH[:, i], ctx), avail_BNA[:, i]).argmax(-1)
        return acts

    def act(obs, state, avail, prev, hidden, mode):
        logits_e, h = algo.actor.encode(obs, prev, hidden)
        mine, joint = masked_greedy(logits_e, avail), coordination(h, avail, None)
        alive = avail[..., 1:].any(-1)  # SMAX/SMAC: a dead agent has only no-op available
        agree.append((mine == joint)[alive].float())
        if mode == "decentralized":
            a = mine
        elif mode == "joint":
            a = joint
        elif mode == "joint_ctx_zero":
            a = coordination(h, avail, torch.zeros_like(mine))
        elif mode == "joint_ctx_random":
            uniform = masked_logits(torch.zeros_like(logits_e), avail).softmax(-1)
            a = coordination(h, avail, torch.multinomial(uniform.view(-1, uniform.shape[-1]), 1, generator=gen)
                             .view(mine.shape))
        else:
            a = coordination(h, avail, mine)
        zeros = torch.zeros_like(a, dtype=torch.float32)
        return a, zeros, zeros, h

    algo._act = act
    out: dict[str, Any] = {"run_dir": str(run_dir), "env_id": cfg.env.env_id, "seed": cfg.run.seed,
                           "env_steps": int(ckpt["env_steps"]), "modes": {}}
    with torch.no_grad():
        for mode in MODES:
            agree.clear()
            r = algo._run_eval(episodes, mode)
            out["modes"][mode] = {"win_rate": r["win_rate"], "return": r["return"],
                                  "episode_length": r["episode_length"],
                                  "agreement": float(torch.cat(agree).mean()) if agree else float("nan")}
            print(f"{run_dir.name} {mode}: win {r['win_rate']:.2f} return {r['return']:.2f} "
                  f"agreement {out['modes'][mode]['agreement']:.3f}", flush=True)
    algo.close()
    return out


def markdown(results: list[dict[str, Any]], episodes: int) -> str:
    lines = ["# TAD-PPO: where the distillation gap lies", "",
             f"Greedy win rate over {episodes} episodes per policy (the eval protocol of the run, from its checkpoint), "
             "and in brackets how often the distilled actor's greedy action equals the coordination policy's on "
             "the steps of those episodes (alive agents).", "",
             "| run | env steps | " + " | ".join(LABELS[m] for m in MODES) + " |",
             "|---|---:|" + "---:|" * len(MODES)]
    for r in results:
        cells = [f"{r['modes'][m]['win_rate']:.2f} ({r['modes'][m]['agreement']:.2f})" for m in MODES]
        lines.append(f"| {r['env_id']} seed {r['seed']} | {r['env_steps']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--checkpoint", default="latest.pt")
    p.add_argument("--out", required=True, help="path prefix of .json/.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = [probe(d, args.episodes, args.checkpoint) for d in args.run_dirs]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"episodes": args.episodes, "runs": results}, indent=1))
    atomic_write_text(out.with_suffix(".md"), markdown(results, args.episodes))
    print(markdown(results, args.episodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
