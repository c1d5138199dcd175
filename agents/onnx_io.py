"""The exported-model format shared by export (writer) and serving (reader): names, versions, hashing.

Torch-free on purpose: the serving image imports this module without PyTorch.

A model dir holds ``manifest.json`` and one ``agent_<i>.onnx`` per agent. Each ONNX file is
``agents.recurrent.GreedyAgentPolicy`` for one agent with this signature (DESIGN.md, "Agent
model contract"; ``B`` is a dynamic batch dim)::

    obs float32 [B, O], prev_action int64 [B] (-1 = first step), avail_actions bool [B, A],
    hidden float32 [B, H]  ->  action int64 [B], scores float32 [B, A], hidden_out float32 [B, H]
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from marlctl.agents import files

INPUT_NAMES = ("obs", "prev_action", "avail_actions", "hidden")
OUTPUT_NAMES = ("action", "scores", "hidden_out")
BATCH_DIM = "batch"

ONNX_FORMAT = "marlctl.agent.onnx"
"""Value of the ``format`` metadata prop of every exported agent file."""
ONNX_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "marlctl.model"
MANIFEST_VERSION = 1
DEFAULT_OPSET = 17

MANIFEST_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "env_id": str,
    "algorithm": str,
    "kind": str,
    "n_agents": int,
    "obs_dim": int,
    "n_actions": int,
    "hidden_dim": int,
    "opset": int,
    "env_steps": int,
    "source_checkpoint": str,
    "source_sha256": str,
    "exported_at": str,
    "agents": list,
}
"""Top-level manifest keys and their JSON types (``version`` = ``MANIFEST_VERSION``)."""

AGENT_ENTRY_REQUIRED: dict[str, type] = {"index": int, "file": str, "sha256": str, "bytes": int}
"""Keys of each ``manifest["agents"][i]`` entry."""


def agent_file_name(index: int) -> str:
    return f"agent_{index}.onnx"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Manifests are written with sorted keys (stable diffs, stable hashes of the JSON)."""
    files.atomic_write_json(path, obj, sort_keys=True)



def manifest_problems(manifest: Any) -> list[str]:
    """Every way ``manifest`` departs from the schema (empty list = valid)."""
    if not isinstance(manifest, dict):
        return [f"manifest must be a JSON object, got {type(manifest).__name__}"]
    problems = []
    for key, typ in MANIFEST_REQUIRED.items():
        if key not in manifest:
            problems.append(f"missing key {key!r}")
        elif not isinstance(manifest[key], typ) or (typ is int and isinstance(manifest[key], bool)):
            problems.append(f"{key!r} must be {getattr(typ, '__name__', typ)}, got {type(manifest[key]).__name__}")
    if problems:
        return problems
    if manifest["format"] != MANIFEST_FORMAT:
        problems.append(f"format is {manifest['format']!r}, expected {MANIFEST_FORMAT!r}")
    if manifest["version"] != MANIFEST_VERSION:
        problems.append(f"manifest version {manifest['version']} not supported (this marlctl reads {MANIFEST_VERSION})")
    if manifest["kind"] not in ("q", "actor"):
        problems.append(f"kind is {manifest['kind']!r}, expected 'q' or 'actor'")
    for key in ("n_agents", "obs_dim", "n_actions", "hidden_dim"):
        if manifest[key] < 1:
            problems.append(f"{key!r} must be >= 1, got {manifest[key]}")
    agents = manifest["agents"]
    if len(agents) != manifest["n_agents"]:
        problems.append(f"'agents' lists {len(agents)} entries but n_agents is {manifest['n_agents']}")
    for i, entry in enumerate(agents):
        if not isinstance(entry, dict):
            problems.append(f"agents[{i}] must be an object")
            continue
        for key, typ in AGENT_ENTRY_REQUIRED.items():
            if not isinstance(entry.get(key), typ):
                problems.append(f"agents[{i}].{key} missing or not {typ.__name__}")
        if entry.get("index") != i:
            problems.append(f"agents[{i}].index is {entry.get('index')!r}, expected {i}")
        file = entry.get("file")
        if isinstance(file, str) and (Path(file).name != file or not file.endswith(".onnx")):
            problems.append(f"agents[{i}].file {file!r} must be a plain *.onnx file name inside the model dir")
    return problems


def marlctl_version() -> str:
    """The installed marlctl version (``unknown`` when running from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("marlctl")
    except PackageNotFoundError:
        return "unknown"
