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
    ray: str | None = typer.Option(None, "--ray", help="Collect on Ray workers: local (start Ray here), HOST:PORT of a "
                                   "running head (`ray start --head`) or auto (the cluster this node is in); with "
                                   "--resume also none (one process)."),
    rollout_workers: int | None = typer.Option(None, "--rollout-workers", help="Rollout workers (Ray actors; needs "
                                               "--ray; with --resume: the new count)."),
    envs_per_worker: int | None = typer.Option(None, "--envs-per-worker", help="Batched envs per worker (default "
                                               "env.num_envs)."),
    worker_cpus: float | None = typer.Option(None, "--worker-cpus", help="CPUs each worker reserves (default 1)."),
    max_policy_lag: int | None = typer.Option(None, "--max-policy-lag", help="Value methods: drop episodes of a "
                                              "policy more than K versions old (default 16)."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics of the run on "
                                            "this port (marl_train_*)."),
) -> None:
    """Train an algorithm on an environment (or resume a run), with logs, evaluation and checkpoints."""
    # Cheap checks first (no PyTorch import), so bad input fails fast.
    from marlctl.trainer.config import config_layers, resolve_layers
    from marlctl.trainer.distributed.settings import ray_flags, with_flags
    from marlctl.trainer.errors import ConfigValueError
    from marlctl.trainer.registry import ALGORITHMS, check_algorithm_name

    if metrics_port is not None and not 0 < metrics_port < 65536:
        raise ConfigValueError(f"--metrics-port {metrics_port} is not a port; valid: 1..65535")
    flags = ray_flags(ray, rollout_workers, envs_per_worker, worker_cpus, max_policy_lag)
    if resume is not None:
        extra = [name for name, value in (("--algo", algo), ("--env", env), ("--seed", seed), ("--device", device),
                                          ("--out", out), ("--config", config), ("--logger", logger),
                                          ("--mlflow-uri", mlflow_uri)) if value is not None]
        if extra or set_:
            raise ConfigValueError(f"--resume continues a run with its own config.json; do not combine it with "
                                   f"{', '.join(extra + (['--set'] if set_ else []))} (only --steps may change)")
        from marlctl.trainer.run import load_run_config, resume_run

        ray_cfg = with_flags(load_run_config(resume).ray, flags) if flags else None
        _check_cluster(ray_cfg)
        resume_run(resume, steps=steps, console=console, ray=ray_cfg, metrics_port=metrics_port)
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
    ray_set = [f"ray.{k}={v}" for k, v in flags.items()]
    layers = config_layers(algo, env, config_file=config, overrides=[*set_, *ray_set], steps=steps, seed=seed,
                           device=device)
    cfg = resolve_layers(layers)
    _check_cluster(cfg.ray)
    from marlctl.trainer.run import train_run

    train_run(cfg, out, console=console, metrics_port=metrics_port, trackers=trackers, layers=layers)


def _check_cluster(ray_cfg: object) -> None:
    """An unreachable ``--ray HOST:PORT`` fails here, before a run dir is made or PyTorch is imported."""
    address = getattr(ray_cfg, "address", "")
    if address and address not in ("local", "auto"):
        from marlctl.trainer.distributed.cluster import check_reachable

        check_reachable(address, ray_cfg.connect_timeout_s)  # type: ignore[attr-defined]


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
