"""`marlctl export`: a run's per-agent networks -> one verified ONNX file per agent + a team manifest."""
from __future__ import annotations

from pathlib import Path

import typer
from marlctl.cli.common import console, handle_user_errors


def export(
    run_dir: Path = typer.Argument(..., help="Run dir (uses checkpoints/latest.pt) or a .pt checkpoint."),
    out: Path = typer.Option(..., "--out", help="Model dir to write (manifest.json + agent_<i>.onnx)."),
    checkpoint: Path | None = typer.Option(None, help="Export this checkpoint instead of the run's latest."),
    opset: int | None = typer.Option(None, help="ONNX opset (default 17)."),
    verify_episodes: int = typer.Option(3, help="Episodes of the real env replayed through PyTorch and ONNX Runtime."),
    tolerance: float = typer.Option(1e-4, help="Largest allowed |ONNX Runtime - PyTorch| of scores and hidden state."),
    seed: int = typer.Option(0, help="Seed of the verification episodes."),
) -> None:
    """Export every agent of a trained team to ONNX and verify it against PyTorch."""
    from marlctl.agents.export import ExportConfig, export_team
    from rich.table import Table

    if verify_episodes < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--verify-episodes")
    cfg = ExportConfig(verify_episodes=verify_episodes, tolerance=tolerance, seed=seed)
    with console.status("exporting and verifying..."):
        result = export_team(run_dir, out, opset=opset, checkpoint=checkpoint, config=cfg)
    m = result.manifest
    table = Table(title=f"{m['env_id']} ({m['algorithm']}, {m['kind']}), {m['env_steps']} env steps -> {out}")
    for col in ("agent", "file", "sha256", "steps checked", "max |diff| scores", "max |diff| hidden", "action agreement"):
        table.add_column(col, justify="right" if col not in ("file", "sha256") else "left")
    for entry, check in zip(m["agents"], result.agents, strict=True):
        table.add_row(str(entry["index"]), entry["file"], entry["sha256"][:16], str(check.steps),
                      f"{check.max_abs_diff_scores:.2e}", f"{check.max_abs_diff_hidden:.2e}",
                      f"{check.action_agreement:.2%}")
    console.print(table)
    source = "the real environment" if result.source == "env" else f"synthetic inputs ({result.source_note})"
    console.print(f"verified on {result.episodes} episodes of {source}, tolerance {cfg.tolerance:g}; "
                  f"opset {m['opset']}; source {m['source_checkpoint']}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `export`."""
    app.command("export")(handle_user_errors(export))
