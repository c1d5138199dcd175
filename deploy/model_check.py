"""Checks of an exported model dir for `marlctl deploy` (manifest schema, pinned manifest sha256, per-agent file sha256).

The checks are ``serving.modeldir`` - the one torch-free model-dir verifier that serve, eval and
rollout use too; this module gives them deploy's error type (``ModelCheckError``, exit code 2 in
the CLI). Used by `marlctl deploy render` (refuse to render a team from a bad model dir) and by
the pods' init container `marlctl deploy verify-model` (refuse to start on a model that is not
the one the manifests were rendered for: the manifest's own sha256 is pinned in the pod spec,
and the manifest pins every agent file's sha256).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from marlctl.deploy.errors import ModelCheckError
from marlctl.serving import modeldir
from marlctl.serving.errors import ModelDirError
from marlctl.serving.modeldir import SHA256_HEX_LEN, ModelInfo, is_sha256_hex

__all__ = ["SHA256_HEX_LEN", "ModelInfo", "check_agent_file", "is_sha256_hex", "load_model_dir",
           "parse_manifest_bytes"]


def parse_manifest_bytes(data: bytes, where: str) -> dict[str, Any]:
    """Parse and schema-check manifest bytes; ``where`` names the source in errors."""
    try:
        return modeldir.check_manifest_bytes(data, where)
    except ModelDirError as exc:
        raise ModelCheckError(str(exc)) from None


def check_agent_file(model_dir: Path, manifest: dict[str, Any], index: int) -> None:
    """Raise unless agent ``index``'s file exists with the manifest's size and sha256."""
    try:
        modeldir.read_agent_file(Path(model_dir), manifest, index)
    except ModelDirError as exc:
        raise ModelCheckError(str(exc)) from None


def load_model_dir(model_dir: str | Path, agents: list[int] | None = None,
                   manifest_sha256: str | None = None) -> ModelInfo:
    """Check a model dir: manifest schema, the pinned manifest hash, and the listed agents' files
    (``agents=None`` checks every agent's file; ``[]`` checks none)."""
    try:
        return modeldir.verify_model_dir(model_dir, agents, manifest_sha256)
    except ModelDirError as exc:
        raise ModelCheckError(str(exc)) from None
