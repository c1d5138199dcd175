"""The one check of an exported model dir, torch-free and ONNX-Runtime-free: used by serve, eval, rollout and deploy.

``verify_model_dir(path, agents, manifest_sha256)`` refuses, with a ``ModelDirError`` naming the
problem and what to do, a dir that is missing or has no manifest, a manifest that is not valid
JSON or departs from the schema (``agents.onnx_io.manifest_problems``, sha256 fields that are
not 64 lowercase hex digits), a manifest whose own sha256 differs from a pinned one, and an
agent file that is missing, truncated or whose sha256 differs from the manifest's.
``serving.model.load_agent_model`` then checks the graph itself with ONNX Runtime (built from
the very bytes that were hashed); ``deploy.model_check`` wraps the same checks for its CLI.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marlctl.agents.onnx_io import MANIFEST_NAME, manifest_problems
from marlctl.serving.errors import ModelDirError

SHA256_HEX_LEN = 64


def is_sha256_hex(value: str) -> bool:
    return len(value) == SHA256_HEX_LEN and all(c in "0123456789abcdef" for c in value)


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

    @property
    def version(self) -> str:
        """The model version as the agent services report it: the manifest sha256's first 12 hex digits."""
        return self.manifest_sha256[:12]

    def agent_entry(self, index: int) -> dict[str, Any]:
        return self.manifest["agents"][index]

    def agent_files(self) -> list[Path]:
        return [self.path / entry["file"] for entry in self.manifest["agents"]]


def check_manifest_bytes(data: bytes, where: str) -> dict[str, Any]:
    """Parse and schema-check manifest bytes; ``where`` names the source in errors."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{where} is not valid JSON ({exc}); re-export the model with `marlctl export`") from None
    problems = manifest_problems(manifest)
    if not problems:
        problems = [f"agents[{i}].sha256 {entry['sha256']!r} is not 64 lowercase hex digits"
                    for i, entry in enumerate(manifest["agents"]) if not is_sha256_hex(entry["sha256"])]
    if problems:
        raise ModelDirError(f"{where} is not a valid marlctl model manifest: " + "; ".join(problems)
                            + " (re-export the model with `marlctl export`)")
    return manifest


def check_agent_index(info_or_manifest: ModelInfo | dict[str, Any], index: int, where: str | Path) -> None:
    manifest = info_or_manifest.manifest if isinstance(info_or_manifest, ModelInfo) else info_or_manifest
    n = manifest["n_agents"]
    if not 0 <= index < n:
        raise ModelDirError(f"agent index {index} out of range: {where} has agents 0..{n - 1}")


def read_agent_file(model_dir: Path, manifest: dict[str, Any], index: int) -> tuple[bytes, str]:
    """``(bytes, sha256)`` of agent ``index``'s file, refused unless it has the manifest's size and sha256."""
    entry = manifest["agents"][index]
    path = model_dir / entry["file"]
    if not path.is_file():
        raise ModelDirError(f"agent {index}: {path} is missing (listed in {model_dir / MANIFEST_NAME} as "
                            f"{entry['file']!r})")
    data = path.read_bytes()
    if len(data) != entry["bytes"]:
        raise ModelDirError(f"agent {index}: {path} has {len(data)} bytes but the manifest says {entry['bytes']}: "
                            "truncated or replaced")
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise ModelDirError(f"agent {index}: {path} sha256 {digest[:16]}... does not match the manifest's "
                            f"{entry['sha256'][:16]}...: tampered or replaced after export; re-export or restore it")
    return data, digest


def verify_model_dir(model_dir: str | Path, agents: list[int] | None = None,
                     manifest_sha256: str | None = None) -> ModelInfo:
    """Check a model dir: manifest schema, the pinned manifest hash, and the listed agents' files
    (``agents=None``: every agent; ``[]``: manifest only)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelDirError(f"model dir {path} does not exist or is not a directory "
                            "(create one with `marlctl export RUN_DIR --out DIR`)")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelDirError(f"{manifest_path} not found: {path} has no {MANIFEST_NAME}, so it is not a model dir "
                            "written by `marlctl export`")
    try:
        data = manifest_path.read_bytes()
    except OSError as exc:
        raise ModelDirError(f"cannot read {manifest_path}: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if manifest_sha256 is not None:
        if not is_sha256_hex(manifest_sha256):
            raise ModelDirError(f"--manifest-sha256 {manifest_sha256!r} is not 64 lowercase hex digits")
        if digest != manifest_sha256:
            raise ModelDirError(f"{manifest_path} has sha256 {digest}, but this deployment pins {manifest_sha256}: "
                                "the model dir holds another model than the one the manifests were rendered for")
    manifest = check_manifest_bytes(data, str(manifest_path))
    for index in range(manifest["n_agents"]) if agents is None else agents:
        check_agent_index(manifest, index, path)
        read_agent_file(path, manifest, index)
    return ModelInfo(path=path, manifest=manifest, manifest_sha256=digest)
