"""`marlctl config show`: every resolved training setting, its value and the layer it came from."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from marlctl.cli.common import console, handle_user_errors

config_app = typer.Typer(help="Inspect training configurations.", no_args_is_help=True)


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str | bool) or value is None else str(value)


def show(
    run_dir: Path | None = typer.Argument(None, help="A run directory: show its resolved config.json (and the "
                                          "layers recorded in config_sources.json). Omit it and pass --algo/--env "
                                          "to resolve a new run's config."),
    algo: str | None = typer.Option(None, "--algo", help="Algorithm (as for `marlctl train`)."),
    env: str | None = typer.Option(None, "--env", help="Environment id (as for `marlctl train`)."),
    config: Path | None = typer.Option(None, "--config", help="TOML or JSON file of overrides, as for `train`."),
    set_: list[str] = typer.Option([], "--set", help="Override one key: section.key=value (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for scripts) instead of a table."),
    changed: bool = typer.Option(False, "--changed", help="Only the keys that are not at their dataclass default."),
) -> None:
    """Print every resolved key, its value and the layer it came from (default, packaged TOML, --config, --set)."""
    from marlctl.trainer.config import (
        DEFAULT_LAYER,
        PRECEDENCE,
        SOURCES_FILE,
        config_layers,
        explain_config,
        explain_run_config,
        resolve_layers,
    )
    from marlctl.trainer.errors import ConfigValueError

    if run_dir is not None:
        if algo or env or config or set_:
            raise ConfigValueError("config show RUN_DIR shows that run's config; do not combine it with --algo, "
                                   "--env, --config or --set")
        from marlctl.trainer.run import load_run_config

        cfg = load_run_config(run_dir)
        record_path = run_dir / SOURCES_FILE
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
        settings = explain_run_config(cfg, record)
        title = f"config of {run_dir}"
    else:
        missing = [name for name, value in (("--algo", algo), ("--env", env)) if value is None]
        if missing:
            raise ConfigValueError(f"missing {', '.join(missing)} (or pass a RUN_DIR)")
        assert algo is not None and env is not None
        from marlctl.envs import parse_env_id
        from marlctl.trainer.registry import check_algorithm_name

        check_algorithm_name(algo)
        parse_env_id(env)
        layers = config_layers(algo, env, config_file=config, overrides=set_)
        cfg = resolve_layers(layers)
        settings = explain_config(cfg, layers)
        title = f"config of {algo} on {env}"
    if changed:
        settings = [s for s in settings if s.source != DEFAULT_LAYER]
    if as_json:
        out = {"precedence": PRECEDENCE, "settings": [
            {"key": s.key, "value": s.value, "source": s.source, "overrides": [list(o) for o in s.overrides]}
            for s in settings]}
        typer.echo(json.dumps(out, indent=1))
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption=f"precedence: {PRECEDENCE}", caption_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_column("from")
    table.add_column("overrides", style="dim")
    for s in settings:
        style = "dim" if s.source == DEFAULT_LAYER else None
        overrides = ", ".join(f"{layer} {_shown(v)}" for layer, v in s.overrides)
        table.add_row(s.key, _shown(s.value), s.source, overrides, style=style)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add `config show`."""
    config_app.command("show")(handle_user_errors(show))
    app.add_typer(config_app, name="config")
