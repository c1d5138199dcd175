"""`marlctl envs list` and `marlctl envs check ID`: what environments exist here, and a smoke run of one.

Imports no PyTorch; a backend (JAX for ``smax:``) is imported only by the id being checked.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import typer
from marlctl.cli.common import console, fail, handle_user_errors


@dataclass(frozen=True)
class CheckConfig:
    """Settings of `marlctl envs check`."""

    env_id: str
    """The environment id to check."""
    episodes: int = 5
    """Random-action episodes run on a single environment."""
    batch: int = 16
    """Environments in the batched throughput run (0 skips it)."""
    batch_steps: int = 200
    """Batched steps timed for the batched throughput figure."""
    seed: int = 0
    """Seed of the environments and of the random actions."""


@dataclass(frozen=True)
class CheckReport:
    """What `marlctl envs check` measured."""

    returns: list[float]
    lengths: list[int]
    wins: int
    deterministic: bool
    """Episode 0 replayed from its seed and actions gave the same observations and rewards."""
    single_steps_per_s: float
    batched_steps_per_s: float | None
    batched_episodes: int


def run_check(cfg: CheckConfig) -> CheckReport:
    """Random available actions: ``episodes`` single episodes, then ``batch_steps`` batched steps."""
    import numpy as np
    from marlctl.envs import make_batched_env, make_env
    from marlctl.envs.vector import random_actions

    rng = np.random.default_rng(cfg.seed)
    env = make_env(cfg.env_id)
    returns: list[float] = []
    lengths: list[int] = []
    wins = steps = 0
    first: list[tuple[np.ndarray, np.ndarray, float]] = []  # episode 0: (actions, obs, reward) per step
    t0 = time.perf_counter()
    try:
        for ep in range(cfg.episodes):
            ts = env.reset(cfg.seed) if ep == 0 else env.reset()
            ret, length = 0.0, 0
            while not ts.done:
                actions = random_actions(ts.avail, rng)
                ts = env.step(actions)
                if ep == 0:
                    first.append((actions, ts.obs.copy(), ts.reward))
                ret += ts.reward
                length += 1
            returns.append(ret)
            lengths.append(length)
            wins += bool(ts.info["won"])
            steps += length
        single_rate = steps / max(time.perf_counter() - t0, 1e-9)
        env.reset(cfg.seed)
        replay = [env.step(a) for a, _, _ in first]
        deterministic = all(
            np.array_equal(r.obs, obs) and r.reward == rew for r, (_, obs, rew) in zip(replay, first, strict=True)
        )
    finally:
        env.close()

    batched_rate, batched_eps = None, 0
    if cfg.batch > 0:
        benv = make_batched_env(cfg.env_id, cfg.batch)
        try:
            bs = benv.reset(cfg.seed)
            bs = benv.step(random_actions(bs.avail, rng))  # first step outside the timing (JIT warm-up)
            t0 = time.perf_counter()
            for _ in range(cfg.batch_steps):
                bs = benv.step(random_actions(bs.avail, rng))
                batched_eps += int(bs.done.sum())
            batched_rate = cfg.batch_steps * cfg.batch / max(time.perf_counter() - t0, 1e-9)
        finally:
            benv.close()
    return CheckReport(returns, lengths, wins, deterministic, single_rate, batched_rate, batched_eps)


def register(app: typer.Typer) -> None:
    """Add `marlctl envs list|check` to the app."""
    envs_app = typer.Typer(help="List environments and smoke-test one.", no_args_is_help=True)
    app.add_typer(envs_app, name="envs")

    @envs_app.command("list")
    @handle_user_errors
    def list_cmd() -> None:
        """Every environment family: id pattern, options, and whether it runs here (and why not)."""
        from marlctl.envs import list_families
        from rich.table import Table

        table = Table(title="marlctl environments", show_lines=True)
        table.add_column("id pattern", style="bold", no_wrap=True)
        table.add_column("what")
        table.add_column("options (default)")
        table.add_column("installed")
        for fam, installed, note in list_families():
            pattern = f"{fam.name}:SCENARIO" if fam.scenarios else fam.name
            what = fam.summary + (f"\n[dim]scenarios:[/] {', '.join(fam.scenarios)}" if fam.scenarios else "")
            options = "\n".join(f"{k}: {v}" for k, v in fam.options) or "-"
            status = f"[green]yes[/] ({note})" if installed else f"[red]no[/] ({note})"
            table.add_row(pattern, what, options, status)
        console.print(table)
        console.print("options follow the id after commas: [bold]family[:scenario][,key=value...][/]")

    @envs_app.command("check")
    @handle_user_errors
    def check_cmd(
        env_id: str = typer.Argument(..., help="Environment id, e.g. matrix:qtran or smax:3m."),
        episodes: int = typer.Option(5, "--episodes", "-n", min=1, help="Random-action episodes (single env)."),
        batch: int = typer.Option(16, "--batch", "-b", min=0, help="Batched envs for the throughput run (0 = skip)."),
        batch_steps: int = typer.Option(200, "--batch-steps", min=1, help="Timed batched steps."),
        seed: int = typer.Option(0, "--seed", min=0, help="Seed of envs and random actions."),
    ) -> None:
        """Print the spec, run random available actions, report return/length and env-steps/s."""
        from marlctl.envs import env_spec
        from rich.table import Table

        cfg = CheckConfig(env_id, episodes, batch, batch_steps, seed)
        spec = env_spec(env_id)
        table = Table(title=f"spec of {spec.env_id}", show_header=False)
        for key, value in spec.to_dict().items():
            table.add_row(key, str(value) if value != [] else "-")
        console.print(table)
        with console.status(f"running {episodes} random episodes of {spec.env_id} ..."):
            rep = run_check(cfg)
        mean_ret = sum(rep.returns) / len(rep.returns)
        mean_len = sum(rep.lengths) / len(rep.lengths)
        console.print(
            f"random policy over {episodes} episodes: return mean {mean_ret:.3f} "
            f"(min {min(rep.returns):.3f}, max {max(rep.returns):.3f}), length mean {mean_len:.1f}"
            + (f", won {rep.wins}/{episodes}" if spec.has_won else "")
        )
        if not rep.deterministic:
            raise fail(f"{spec.env_id}: replaying episode 0 from its seed and actions gave a different episode")
        console.print("same seed + actions -> same episode: yes")
        console.print(f"single env: {rep.single_steps_per_s:,.0f} env-steps/s")
        if rep.batched_steps_per_s is not None:
            console.print(
                f"batched ({batch} envs, {batch_steps} steps): {rep.batched_steps_per_s:,.0f} env-steps/s, "
                f"{rep.batched_episodes} episodes finished"
            )
        console.print("[green]ok[/]")
