"""The `marlctl` command-line application: a thin Typer layer over the packages.

Each command group lives in its own module under ``marlctl.cli`` with a ``register(app)``
function; heavy libraries (PyTorch, JAX, the football engine) are imported inside the
commands, so ``marlctl --help`` and the serving image start fast and without them.
"""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    help="marlctl: cooperative MARL from a centralized trainer to decentralized agent services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

COMMAND_MODULES = (
    "envs_cmd",  # marlctl envs list|check
    "train_cmd",  # marlctl train, marlctl plot
    "config_cmd",  # marlctl config show
    "export_cmd",  # marlctl export
    "serve_cmd",  # marlctl serve, marlctl serve-team
    "rollout_cmd",  # marlctl rollout
    "run_cmd",  # marlctl run, marlctl eval, marlctl replay
    "deploy_cmd",  # marlctl deploy render
    "demo_cmd",  # marlctl demo (the README's end-to-end job)
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"marlctl.cli.{_name}").register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
