"""Checks of an exported model dir (manifest schema, per-agent file sha256) without ONNX Runtime or PyTorch.

Used by `marlctl deploy render` (refuse to render a team from a bad model dir) and by the
pods' init container `marlctl deploy verify-model` (refuse to start on a model that is not
the one the manifests were rendered for: the manifest's own sha256 is pinned in the pod spec,
and the manifest pins every agent file's sha256).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marlctl.agents.onnx_io import MANIFEST_NAME, manifest_problems, sha256_file
from marlctl.deploy.errors import ModelCheckError

SHA256_HEX_LEN = 64


@dataclass(frozen=True)
class ModelInfo:
    """A model dir whose manifest passed the schema check (and whose checked files matched)."""

    path: Path
    """The model dir."""
    manifest: dict[str, Any]
    """The parsed ``manifest.json``."""
    manifest_sha256: str
    """sha256 of the manifest file's bytes: pins every agent file through their listed hashes."""

    @property
    def n_agents(self) -> int:
        return int(self.manifest["n_agents"])

    def agent_entry(self, index: int) -> dict[str, Any]:
        return self.manifest["agents"][index]

    def agent_files(self) -> list[Path]:
        return [self.path / entry["file"] for entry in self.manifest["agents"]]


def is_sha256_hex(value: str) -> bool:
    return len(value) == SHA256_HEX_LEN and all(c in "0123456789abcdef" for c in value)


def parse_manifest_bytes(data: bytes, where: str) -> dict[str, Any]:
    """Parse and schema-check manifest bytes; ``where`` names the source in errors."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCheckError(f"{where} is not valid JSON ({exc}); re-export the model with `marlctl export`") from None
    problems = manifest_problems(manifest)
    if problems:
        raise ModelCheckError(
            f"{where} is not a valid marlctl model manifest: " + "; ".join(problems)
            + " (re-export the model with `marlctl export`)"
        )
    for i, entry in enumerate(manifest["agents"]):
        if not is_sha256_hex(entry["sha256"]):
            raise ModelCheckError(f"{where}: agents[{i}].sha256 {entry['sha256']!r} is not 64 lowercase hex digits")
    return manifest


def check_agent_file(model_dir: Path, manifest: dict[str, Any], index: int) -> None:
    """Raise unless agent ``index``'s file exists with the manifest's size and sha256."""
    entry = manifest["agents"][index]
    path = model_dir / entry["file"]
    if not path.is_file():
        raise ModelCheckError(f"agent {index}: model file {path} is missing (the manifest lists {entry['file']!r})")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ModelCheckError(
            f"agent {index}: {path} has {size} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
        )
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ModelCheckError(
            f"agent {index}: {path} has sha256 {digest}, the manifest pins {entry['sha256']} (tampered or replaced)"
        )


def load_model_dir(
    model_dir: str | Path,
    agents: list[int] | None = None,
    manifest_sha256: str | None = None,
) -> ModelInfo:
    """Check a model dir: manifest schema, the pinned manifest hash, and the listed agents' files.

    ``agents=None`` checks every agent's file; ``[]`` checks none (manifest only).
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelCheckError(f"model dir {path} does not exist or is not a directory (make one with `marlctl export`)")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelCheckError(f"{path} has no {MANIFEST_NAME}: not a model dir (make one with `marlctl export`)")
    data = manifest_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if manifest_sha256 is not None:
        if not is_sha256_hex(manifest_sha256):
            raise ModelCheckError(f"--manifest-sha256 {manifest_sha256!r} is not 64 lowercase hex digits")
        if digest != manifest_sha256:
            raise ModelCheckError(
                f"{manifest_path} has sha256 {digest}, but this deployment pins {manifest_sha256}: "
                "the model dir holds another model than the one the manifests were rendered for"
            )
    manifest = parse_manifest_bytes(data, str(manifest_path))
    n_agents = manifest["n_agents"]
    for index in range(n_agents) if agents is None else agents:
        if not 0 <= index < n_agents:
            raise ModelCheckError(f"agent index {index} outside [0, {n_agents}) for the {n_agents}-agent model {path}")
        check_agent_file(path, manifest, index)
    return ModelInfo(path=path, manifest=manifest, manifest_sha256=digest)
