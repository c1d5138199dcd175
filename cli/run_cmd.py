"""`marlctl run`, `marlctl eval`, `marlctl replay`: live episodes via agent services, in-process evaluation, replay."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from marlctl.cli.common import console, err_console, handle_user_errors
from rich.table import Table


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def print_summary(summary: Any, title: str, agent_labels: list[str]) -> None:
    """One-screen Rich summary of an ``EpisodeSummary``."""
    s = summary
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("episodes", f"{s.episodes} finished, {s.aborted} aborted, {s.degraded} degraded"
                  f"  ({s.wall_seconds:.1f} s)")
    lo, hi = s.win_rate_ci
    table.add_row("win rate", f"{_fmt(s.win_rate)}  (95% Wilson CI {_fmt(lo)} .. {_fmt(hi)}; {s.wins} wins)")
    table.add_row("outcomes", f"{s.wins} won, {s.episodes - s.wins - s.time_outs} ended without a win, "
                  f"{s.time_outs} at the episode limit")
    lo, hi = s.return_ci
    table.add_row("mean return", f"{_fmt(s.mean_return)}  (95% t CI {_fmt(lo)} .. {_fmt(hi)})")
    table.add_row("episode length", f"{_fmt(s.mean_length, 1)} steps (mean)")
    for i, (p50, p99) in sorted(s.latency_ms.items()):
        label = agent_labels[i] if i < len(agent_labels) else ""
        table.add_row(f"agent {i} latency", f"p50 {_fmt(p50)} ms, p99 {_fmt(p99)} ms  {label}")
    if s.fallbacks:
        text = ", ".join(f"agent {a} {r}: {c}" for (a, r), c in sorted(s.fallbacks.items()))
        table.add_row("fallbacks", f"[yellow]{text}[/]")
    else:
        table.add_row("fallbacks", "none")
    console.print(table)


def _write_json(path: Path | None, doc: dict[str, Any]) -> None:
    if path is None:
        return
    from marlctl.agents.onnx_io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, doc)


def _progress(total: int, label: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[last]}"), console=console, transient=False,
                    disable=not console.is_terminal)


@handle_user_errors
def run(
    env: str = typer.Option(..., "--env", help="Environment id, e.g. matrix:qtran, smax:3m, grf:academy_3_vs_1_with_keeper."),
    agents: str = typer.Option(..., "--agents", help="host:port of each agent service, comma-separated, in agent order."),
    episodes: int = typer.Option(10, help="Episodes to run."),
    concurrency: int = typer.Option(1, help="Episodes in flight at once."),
    seed: int = typer.Option(0, help="Episode i uses env seed SEED+i."),
    record: Path | None = typer.Option(None, "--record", help="Directory for one record file per episode."),
    record_obs: bool = typer.Option(False, "--record-obs", help="Also record observations and avail masks."),
    timeout_ms: float = typer.Option(1000.0, "--timeout-ms", help="Deadline of one agent decision."),
    on_agent_failure: str = typer.Option("fail", "--on-agent-failure", help="fail (abort the episode) | noop | random."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Expose runner metrics on this port."),
    connect_timeout: float = typer.Option(30.0, "--connect-timeout", help="Seconds to wait for every service's GetSpec."),
    step_interval_ms: float = typer.Option(0.0, "--step-interval-ms", help="Real-time pacing: min ms between steps."),
    summary_json: Path | None = typer.Option(None, "--summary-json", help="Also write the summary as JSON here."),
    transport: str = typer.Option("stream", "--transport",
                                  help="stream: one stream per episode and agent | multiplex: one stream per agent "
                                       "for all episodes in flight, their decisions batched (faster at high --concurrency)."),
    pushgateway: str | None = typer.Option(None, "--pushgateway",
                                           help="Push the final runner metrics to this Prometheus Pushgateway "
                                                "(http://host:9091) when the run ends."),
    push_job: str = typer.Option("marlctl_run", "--push-job", help="Pushgateway job name of those metrics."),
) -> None:
    """Run live episodes whose agents are gRPC agent services (one per agent); print a summary.

    Each step sends each agent only its own observation and avail mask, on that agent's stream. A failed decision (deadline, agent down, broken stream) follows --on-agent-failure and is recorded; the agent's stream is reopened at its next decision, so a restarted agent rejoins with a fresh recurrent state.

    Exit code 0, or 1 when an episode was aborted (--on-agent-failure fail) or the final metrics could not be pushed to --pushgateway, 2 on bad input.
    """
    from marlctl.serving.runner import EpisodeRunner, RunConfig

    addresses = tuple(a.strip() for a in agents.split(",") if a.strip())
    config = RunConfig(env_id=env, agents=addresses, episodes=episodes, concurrency=concurrency, seed=seed,
                       record_dir=record, record_obs=record_obs, timeout_ms=timeout_ms,
                       on_agent_failure=on_agent_failure, connect_timeout_s=connect_timeout,
                       step_interval_ms=step_interval_ms, transport=transport, pushgateway=pushgateway,
                       push_job=push_job)
    with _progress(episodes, f"run {env}") as progress:
        task = progress.add_task("episodes", total=episodes, last="")

        def done(rec: Any) -> None:
            o = rec.outcome
            progress.update(task, advance=1, last="aborted" if o.aborted else f"return {o.episode_return:.2f}")

        runner = EpisodeRunner(config, metrics_port=metrics_port, on_episode=done)
        result = runner.run()
    for rec in result.records:
        if rec.outcome.aborted:
            err_console.print(f"[red]episode {rec.episode_index} (seed {rec.seed}) aborted:[/] {rec.outcome.error}")
    specs = result.agent_specs
    labels = [f"[dim]{a} {s.get('algorithm', '')} {s.get('model_sha256', '')[:12]}[/]" for a, s in zip(addresses, specs, strict=True)]
    print_summary(result.summary, f"marlctl run {env}: {len(addresses)} agent services", labels)
    if record is not None:
        console.print(f"records: {len(result.record_paths)} files in {record}")
    _write_json(summary_json, {"env_id": env, "agents": list(addresses), **result.summary.to_dict()})
    if result.push_error:
        err_console.print(f"[red]{result.push_error}[/]")
    elif pushgateway:
        console.print(f"final metrics pushed to {pushgateway} (job {push_job})", highlight=False)
    if result.summary.aborted or result.push_error:
        raise typer.Exit(1)


@handle_user_errors
def eval_(
    model_dir: Path = typer.Argument(..., help="Exported model dir (manifest.json + agent_<i>.onnx)."),
    env: str | None = typer.Option(None, "--env", help="Environment id (default: the one the model was trained on)."),
    episodes: int = typer.Option(10, help="Episodes to run."),
    seed: int = typer.Option(0, help="Episode i uses env seed SEED+i."),
    record: Path | None = typer.Option(None, "--record", help="Directory for one record file per episode."),
    record_obs: bool = typer.Option(False, "--record-obs", help="Also record observations and avail masks."),
    summary_json: Path | None = typer.Option(None, "--summary-json", help="Also write the summary as JSON here."),
) -> None:
    """Evaluate a model dir with in-process ONNX Runtime agents (no network); the same summary as `run`."""
    from marlctl.serving.evaluate import EvalConfig, evaluate, manifest_env_id

    env_id = env or manifest_env_id(model_dir)
    config = EvalConfig(model_dir=model_dir, env_id=env_id, episodes=episodes, seed=seed, record_dir=record,
                        record_obs=record_obs)
    with _progress(episodes, f"eval {env_id}") as progress:
        task = progress.add_task("episodes", total=episodes, last="")
        result = evaluate(config, on_episode=lambda rec: progress.update(
            task, advance=1, last=f"return {rec.outcome.episode_return:.2f}"))
    print_summary(result.summary, f"marlctl eval {model_dir} on {env_id} (in-process ONNX Runtime)",
                  ["[dim]ONNX Runtime in process[/]"] * len(result.summary.latency_ms))
    if record is not None:
        console.print(f"records: {len(result.record_paths)} files in {record}")
    _write_json(summary_json, {"env_id": env_id, "model_dir": str(model_dir), **result.summary.to_dict()})


@handle_user_errors
def replay(
    records: list[Path] = typer.Argument(..., help="Episode record files or directories of them."),
    model: Path | None = typer.Option(None, "--model", help="Re-decide every step with this model dir (in-process ONNX Runtime)."),
    render: Path | None = typer.Option(None, "--render", help="Draw the episode into this GIF (one per record: NAME_<k>.gif)."),
    fps: float = typer.Option(8.0, help="GIF frames per second."),
    summary_json: Path | None = typer.Option(None, "--summary-json", help="Also write the per-record results as JSON here."),
) -> None:
    """Re-simulate recorded episodes from seed + actions and check they reach the recorded outcome.

    Exit code 0 when every record matches (and, with --model, every re-decided action agrees), else 1.
    """
    from marlctl.serving.records import find_records, load_record
    from marlctl.serving.replay import gif_paths

    paths = find_records(list(records))
    loaded = [load_record(p) for p in paths]  # refuse a corrupt file before replaying anything
    gifs = gif_paths(render, len(paths)) if render is not None else []
    results = _replay_all(paths, loaded, model, gifs, fps)
    envs = sorted({rec.env_id for rec in loaded})
    table = Table(title=f"marlctl replay: {len(paths)} record(s) of {', '.join(envs)}", title_justify="left")
    for col in ("episode", "seed", "steps rec/sim", "return rec/sim", "re-simulation", "re-decided agree"):
        table.add_column(col)
    for rec, r in zip(loaded, results, strict=True):
        agree = "-" if r.agreement is None else f"{r.agreements}/{r.decisions}"
        table.add_row(str(rec.episode_index), str(rec.seed), f"{r.recorded_length}/{r.replayed_length}",
                      f"{r.recorded_return:.3f}/{r.replayed_return:.3f}",
                      "[green]match[/]" if r.match else "[red]MISMATCH[/]",
                      agree if r.agreement in (None, 1.0) else f"[red]{agree}[/]")
    console.print(table)
    for path, r in zip(paths, results, strict=True):
        for problem in r.problems:
            err_console.print(f"[red]{path}:[/] {problem}")
        if r.first_disagreement is not None:
            step, agent = r.first_disagreement
            err_console.print(f"[yellow]{path}:[/] first re-decided action that differs: step {step}, agent {agent}")
    for g in gifs:
        console.print(f"rendered {g}")
    _write_json(summary_json, {"records": [dict(vars(r), match=r.match, agreement=r.agreement) for r in results]})
    bad = [r for r in results if not r.match or (r.agreement is not None and r.agreements != r.decisions)]
    if bad:
        err_console.print(f"[red]{len(bad)} of {len(results)} record(s) did not replay identically[/]")
        raise typer.Exit(1)


def _replay_all(paths: list[Path], loaded: list[Any], model: Path | None, gifs: list[Path], fps: float) -> list[Any]:
    """Replay every record; one env (and one team of in-process agents) per env id, reused across records."""
    from marlctl.envs import env_spec, make_env
    from marlctl.serving.evaluate import load_team
    from marlctl.serving.replay import replay_record, write_gif

    envs: dict[str, Any] = {}
    teams: dict[str, Any] = {}
    results = []
    try:
        for k, (path, rec) in enumerate(zip(paths, loaded, strict=True)):
            if rec.env_id not in envs:
                envs[rec.env_id] = make_env(rec.env_id)  # reset per record: a jitted env compiles once
                teams[rec.env_id] = None if model is None else load_team(model, env_spec(rec.env_id))
            result, frames = replay_record(rec, str(path), agents=teams[rec.env_id], render=bool(gifs),
                                           env=envs[rec.env_id])
            if gifs:
                write_gif(frames, gifs[k], fps=fps)
            results.append(result)
    finally:
        for env in envs.values():
            env.close()
    return results


def register(app: typer.Typer) -> None:
    """Add `run`, `eval` and `replay` to the app."""
    app.command("run")(run)
    app.command("eval")(eval_)
    app.command("replay")(replay)
