"""Why TAD-PPO misses 100 on matrix:tad10: can PPO learn the follower's best response at all?

In the transformed MDP the second agent faces a contextual bandit: context (matrix k, first action a1),
50 contexts, 5 arms, payoff ``P[k, a1, a2]``. TAD's optimality argument needs that agent to learn its best
response in EVERY context. This probe isolates that stage: the first agent stays uniform, the follower is
trained by the same PPO update as ``trainer/ppo`` (clip 0.2, 5 epochs, normalized advantages, entropy
0.01, Adam 5e-4 unless stated) with an EXACT baseline ``E_pi[P[k, a1, .]]`` (no critic error), and
we report the fraction of contexts whose greedy action is a best response (ties count) and the mean regret.

Policies compared: ``tad-actor`` - TAD-PPO's own coordination policy for agent 2 (shared representation,
attention over a1, per-position head); ``mlp`` - a 2-layer MLP over one-hot (k, a1); ``bilinear`` -
logits bilinear in embeddings of k and a1; ``tabular`` - one logit table per context (lr 5e-2), and
``tad-actor supervised`` - the same actor fitted by cross-entropy to the best responses (capacity check).
``... entropy 1 -> 0`` rows: the same PPO update with the entropy weight annealed linearly from 1 to 0 over
the run (what configs/env/matrix.policy.toml does, there from 3 to 0) instead of a constant 0.01.

    python bench/tad_follower.py [--iterations 1600] [--batch 32,256] [--seeds 0,1]

Writes ``bench/results/tad/follower.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from marlctl.agents.files import atomic_write_text

OUT = Path(__file__).resolve().parent / "results" / "tad"


def payoffs() -> torch.Tensor:
    from marlctl.envs.matrix import SCENARIOS

    return torch.tensor(np.array(SCENARIOS["tad10"][0]), dtype=torch.float32)  # [k, a1, a2]


def make_policy(kind: str, seed: int) -> tuple[Any, list[torch.nn.Parameter], float]:
    """``(logits(k, a1) -> [B, 5], parameters, learning rate)``."""
    torch.manual_seed(seed)
    if kind.startswith("tad-actor"):
        from marlctl.envs import env_spec, make_env
        from marlctl.trainer.config import load_config
        from marlctl.trainer.registry import algorithm_spec

        cfg = load_config("tad-ppo", "matrix:tad10", seed=seed)
        algo = algorithm_spec("tad-ppo").build(cfg, env_spec("matrix:tad10"), torch.device("cpu"))
        obs_KNO = torch.tensor(np.array([make_env(f"matrix:tad10,task={k}").reset(seed=0).obs for k in range(1, 11)]))
        actor, H = algo.actor, algo.actor.decentralized.hidden_dim

        def logits(k: torch.Tensor, a1: torch.Tensor) -> torch.Tensor:
            B = k.shape[0]
            _, h = actor.encode(obs_KNO[k], torch.full((B, 2), -1), torch.zeros(B, 2, H))
            return actor.coord_logits(h, torch.stack([a1, torch.zeros_like(a1)], 1))[:, 1]

        return logits, list(actor.parameters()), 5e-4
    if kind == "tabular":
        table = torch.nn.Parameter(torch.zeros(10, 5, 5))
        return (lambda k, a1: table[k, a1]), [table], 5e-2
    if kind == "mlp":
        net = torch.nn.Sequential(torch.nn.Linear(15, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                  torch.nn.Linear(64, 5))
        torch.nn.init.orthogonal_(net[-1].weight, 0.01)
        torch.nn.init.zeros_(net[-1].bias)
        return (lambda k, a1: net(torch.cat([F.one_hot(k, 10), F.one_hot(a1, 5)], -1).float())), \
            list(net.parameters()), 5e-4
    if kind == "bilinear":
        ek, ea = torch.nn.Linear(10, 32), torch.nn.Linear(5, 32)
        w = torch.nn.Parameter(torch.randn(32, 32, 5) * 0.01)

        def bilinear(k: torch.Tensor, a1: torch.Tensor) -> torch.Tensor:
            x, y = torch.relu(ek(F.one_hot(k, 10).float())), torch.relu(ea(F.one_hot(a1, 5).float()))
            return torch.einsum("bi,ijo,bj->bo", x, w, y)

        return bilinear, [*ek.parameters(), *ea.parameters(), w], 5e-4
    raise ValueError(kind)


ANNEALED = " entropy 1 -> 0"


def run(kind: str, batch: int, iterations: int, seed: int) -> dict[str, Any]:
    annealed = kind.endswith(ANNEALED)
    kind, label = kind.removesuffix(ANNEALED), kind
    P = payoffs()
    best = P.argmax(-1)  # [k, a1]
    logits, params, lr = make_policy(kind, seed)
    opt = torch.optim.Adam(params, lr=lr, eps=1e-5)
    g = torch.Generator().manual_seed(seed)
    supervised = kind.endswith("supervised")
    t0 = time.perf_counter()
    for it in range(iterations):
        entropy_coef = 1.0 - it / iterations if annealed else 0.01
        k = torch.randint(0, 10, (batch,), generator=g)
        a1 = torch.randint(0, 5, (batch,), generator=g)  # the leader stays uniform
        if supervised:
            loss = F.cross_entropy(logits(k, a1), best[k, a1])
            opt.zero_grad()
            loss.backward()
            opt.step()
            continue
        with torch.no_grad():
            lg = logits(k, a1)
            a2 = torch.multinomial(torch.softmax(lg, -1), 1, generator=g)[:, 0]
            old = torch.log_softmax(lg, -1).gather(-1, a2[:, None])[:, 0]
            adv = P[k, a1, a2] - (torch.softmax(lg, -1) * P[k, a1]).sum(-1)  # exact baseline
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        for _ in range(5):
            lp = torch.log_softmax(logits(k, a1), -1)
            ratio = torch.exp(lp.gather(-1, a2[:, None])[:, 0] - old)
            entropy = -(lp.exp() * lp).sum(-1).mean()
            loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean() - entropy_coef * entropy
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
    kk, aa = torch.arange(10).repeat_interleave(5), torch.arange(5).repeat(10)
    with torch.no_grad():
        lg = logits(kk, aa)
    greedy = lg.argmax(-1)
    ent = float(-(torch.softmax(lg, -1) * torch.log_softmax(lg, -1)).sum(-1).mean())
    return {"policy": label, "batch": batch, "seed": seed, "iterations": iterations,
            "best_response_accuracy": float((P[kk, aa, greedy] >= P[kk, aa].max(-1).values).float().mean()),
            "regret": float((P[kk, aa].max(-1).values - P[kk, aa, greedy]).mean()), "entropy": ent,
            "wall_s": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=1600)
    ap.add_argument("--batch", default="32,256")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    kinds = ("tad-actor", "mlp", "bilinear", "tabular", "tad-actor supervised", "tad-actor" + ANNEALED, "mlp" + ANNEALED)
    rows = []
    for batch in (int(b) for b in args.batch.split(",")):
        for kind in kinds:
            for seed in (int(s) for s in args.seeds.split(",")):
                r = run(kind, batch, args.iterations, seed)
                rows.append(r)
                print(f"{kind:22s} batch {batch:4d} seed {seed}: best response in {r['best_response_accuracy']:.0%} "
                      f"of contexts, regret {r['regret']:.2f}, entropy {r['entropy']:.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "follower.json", json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1))
    lines = ["# TAD-PPO follower probe: the second agent's best response on matrix:tad10 against a uniform leader", "",
             f"Command: `python bench/tad_follower.py {' '.join(sys.argv[1:])}` ({args.iterations} iterations; "
             "50 contexts (matrix, a1), 5 actions; exact baseline). Optimum: 100% of contexts, regret 0.", "",
             "| policy | batch | best-response contexts (per seed) | mean regret | final entropy |",
             "|---|---:|---|---:|---:|"]
    for batch in sorted({r["batch"] for r in rows}):
        for kind in kinds:
            rs = [r for r in rows if r["policy"] == kind and r["batch"] == batch]
            accuracy = ", ".join(f"{r['best_response_accuracy']:.0%}" for r in rs)
            lines.append(f"| {kind} | {batch} | {accuracy} | "
                         f"{np.mean([r['regret'] for r in rs]):.2f} | {np.mean([r['entropy'] for r in rs]):.2f} |")
    atomic_write_text(args.out / "follower.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
