"""Helpers shared by the CLI commands: the console, and turning user errors into clear exits."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

console = Console(stderr=False)
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

# Exit code for bad input (unknown env id, corrupt checkpoint, tampered model, ...).
EXIT_USER_ERROR = 2


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the input was wrong": print the message, no traceback."""
    from marlctl.envs.errors import EnvError

    types: list[type[BaseException]] = [EnvError, FileNotFoundError, FileExistsError, NotADirectoryError]
    for mod, name in (
        ("marlctl.trainer.errors", "TrainerError"),
        ("marlctl.agents.errors", "ModelError"),
        ("marlctl.serving.errors", "ServingError"),
        ("marlctl.deploy.errors", "DeployError"),
    ):
        try:
            types.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def fail(message: str, hint: str | None = None) -> typer.Exit:
    """Print an error (and what to do about it) and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}")
    if hint:
        err_console.print(f"[dim]hint:[/] {hint}")
    return typer.Exit(EXIT_USER_ERROR)


def handle_user_errors(fn: F) -> F:
    """Decorator for commands: known user errors become a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except user_error_types() as exc:  # noqa: B030 - a tuple computed at call time
            raise fail(str(exc) or type(exc).__name__) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
