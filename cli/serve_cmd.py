"""marlctl CLI commands (not yet written; the owning change fills this module)."""
import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
