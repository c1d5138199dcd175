"""`marlctl train` (a new or resumed training run) and `marlctl plot` (learning curves of run dirs)."""
from __future__ import annotations

from pathlib import Path

import typer
from marlctl.cli.common import console, handle_user_errors


def train(
    algo: str | None = typer.Option(None, "--algo", help="Algorithm: vdn, qmix, ow-qmix, cw-qmix, qtran-base, "
                                    "qtran-alt, remix, mappo, tad-ppo (see trainer/registry.py)."),
    env: str | None = typer.Option(None, "--env", help="Environment id, e.g. smax:3m, matrix:qtran, "
                                   "grf:academy_empty_goal_close, predator_prey."),
    steps: int | None = typer.Option(None, "--steps", help="Training budget in env steps (with --resume: the new "
                                     "total budget)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of every RNG (default 0)."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda (default auto)."),
    out: Path | None = typer.Option(None, "--out", help="Run directory to create (must not exist or be empty)."),
    config: Path | None = typer.Option(None, "--config", help="TOML or JSON file: one table per section (run, env, agent, replay, "
                                      "exploration, optim, learner, algo) of key = value."),
    set_: list[str] = typer.Option([], "--set", help="Override one key: section.key=value (repeatable), "
                                   "e.g. --set optim.lr=0.001 --set env.num_envs=16."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this directory from its "
                                       "latest checkpoint."),
    logger: str | None = typer.Option(None, "--logger", help="Experiment trackers, comma-separated: tensorboard, "
                                      "jsonl, mlflow, wandb (default tensorboard,jsonl; --resume keeps the run's)."),
    mlflow_uri: str | None = typer.Option(None, "--mlflow-uri", help="MLflow tracking URI or path for --logger "
                                          "...,mlflow (default: the file store RUN/mlruns)."),
) -> None:
    """Train an algorithm on an environment (or resume a run), with logs, evaluation and checkpoints."""
    # Cheap checks first (no PyTorch import), so bad input fails fast.
    from marlctl.trainer.config import load_config
    from marlctl.trainer.errors import ConfigValueError
    from marlctl.trainer.registry import ALGORITHMS, check_algorithm_name

    if resume is not None:
        extra = [name for name, value in (("--algo", algo), ("--env", env), ("--seed", seed), ("--device", device),
                                          ("--out", out), ("--config", config), ("--logger", logger),
                                          ("--mlflow-uri", mlflow_uri)) if value is not None]
        if extra or set_:
            raise ConfigValueError(f"--resume continues a run with its own config.json; do not combine it with "
                                   f"{', '.join(extra + (['--set'] if set_ else []))} (only --steps may change)")
        from marlctl.trainer.run import resume_run

        resume_run(resume, steps=steps, console=console)
        return
    missing = [name for name, value in (("--algo", algo), ("--env", env), ("--out", out)) if value is None]
    if missing:
        raise ConfigValueError(f"missing {', '.join(missing)} (or pass --resume RUN_DIR); valid algorithms: "
                               f"{', '.join(sorted(ALGORITHMS))}")
    assert algo is not None and env is not None and out is not None
    from marlctl.envs import parse_env_id

    check_algorithm_name(algo)
    parse_env_id(env)
    from marlctl.trainer.trackers import TrackerOptions

    trackers = TrackerOptions.parse(logger, mlflow_uri)
    cfg = load_config(algo, env, config_file=config, overrides=set_, steps=steps, seed=seed, device=device)
    from marlctl.trainer.run import train_run

    train_run(cfg, out, console=console, trackers=trackers)


def plot(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (runs of the same algo and env are "
                                          "aggregated over seeds: mean and min-max band)."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    source: str = typer.Option("eval", "--source", help="eval (greedy evaluations) or train (training episodes)."),
    title: str | None = typer.Option(None, "--title", help="Figure title."),
) -> None:
    """Plot return and win rate vs env steps of one or more runs to a PNG."""
    from marlctl.trainer.plot import plot_runs

    result = plot_runs(run_dirs, out, source=source, title=title)
    for line in result.lines:
        console.print(line, highlight=False)
    console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add `train` and `plot`."""
    app.command("train")(handle_user_errors(train))
    app.command("plot")(handle_user_errors(plot))
