"""Agent bundles: the decentralized per-agent network read back from a training checkpoint.

A checkpoint (written by ``trainer/run.py``) is a ``torch.save`` dict, read here only with
``torch.load(weights_only=True)``; see the CHECKPOINT FORMAT in the shared contracts. This module
never imports the trainer: export and serving only need the agent network and its provenance.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from marlctl.agents.errors import ModelError
from marlctl.agents.recurrent import AgentNet, AgentNetConfig

CHECKPOINT_FORMAT = "marlctl.checkpoint"
CHECKPOINT_VERSION = 1
AGENT_KINDS = ("q", "actor")


@dataclass
class AgentBundle:
    """The per-agent network of a checkpoint (eval mode, CPU) and where it came from."""

    net: AgentNet
    """The shared per-agent network, loaded, in eval mode, on CPU."""
    kind: str
    """``q`` (scores are Q-values) or ``actor`` (scores are policy logits)."""
    algo: str
    """Algorithm that trained it (``qmix``, ``qtran-base``, ``tad-ppo`` ...)."""
    env_id: str
    """Environment id it was trained on."""
    env_spec: dict[str, Any]
    """``EnvSpec.to_dict()`` of that environment."""
    env_steps: int
    """Environment steps of training when the checkpoint was written."""
    checkpoint_path: str
    """The checkpoint file read."""
    checkpoint_sha256: str
    """sha256 of that file's bytes."""


def make_agent_bundle_entry(net: AgentNet, kind: str) -> dict[str, Any]:
    """The ``"agent"`` entry of a checkpoint: ``{"kind", "config", "state_dict"}`` (CPU tensor copies)."""
    if kind not in AGENT_KINDS:
        raise ValueError(f"agent kind {kind!r}; valid: {', '.join(AGENT_KINDS)}")
    return {
        "kind": kind,
        "config": net.config.to_dict(),
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()},
    }


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A run dir -> its ``checkpoints/latest.pt``; a file -> itself. Raises ModelError when missing."""
    p = Path(path)
    if p.is_dir():
        latest = p / "checkpoints" / "latest.pt"
        if not latest.is_file():
            raise ModelError(f"{p} is a directory without checkpoints/latest.pt: expected a training run "
                             "directory (marlctl train --out DIR) or a .pt checkpoint file")
        return latest
    if not p.exists():
        raise ModelError(f"checkpoint {p} does not exist: expected a training run directory or a .pt file")
    return p


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], Path, str]:
    """Load and validate a marlctl checkpoint: ``(checkpoint dict, file path, sha256)``.

    Raises ``ModelError`` for a missing, corrupt or foreign file (never unpickles arbitrary objects)."""
    file = resolve_checkpoint_path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read checkpoint {file}: {exc}") from None
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        ckpt = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a readable checkpoint"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{file} is not a readable marlctl checkpoint (corrupt, truncated or foreign file): "
                         f"{first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{file} is not a marlctl checkpoint: expected a dict with format={CHECKPOINT_FORMAT!r}")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ModelError(f"{file}: checkpoint version {ckpt.get('version')!r} is not supported "
                         f"(this marlctl reads version {CHECKPOINT_VERSION})")
    missing = [k for k in ("algo", "env_id", "env_spec", "env_steps", "agent") if k not in ckpt]
    if missing:
        raise ModelError(f"{file}: checkpoint lacks {', '.join(missing)}")
    return ckpt, file, sha256


def agent_net_from_entry(entry: Any, where: str) -> tuple[AgentNet, str]:
    """Rebuild the ``AgentNet`` of a checkpoint's ``"agent"`` entry; ModelError naming ``where`` if invalid."""
    if not isinstance(entry, dict) or not {"kind", "config", "state_dict"} <= set(entry):
        raise ModelError(f"{where}: the agent entry must hold kind, config and state_dict")
    if entry["kind"] not in AGENT_KINDS:
        raise ModelError(f"{where}: agent kind {entry['kind']!r}; valid: {', '.join(AGENT_KINDS)}")
    try:
        config = AgentNetConfig(**entry["config"])
        net = AgentNet(config)
        net.load_state_dict(entry["state_dict"], strict=True)
    except (TypeError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{where}: the agent network does not load: {first}") from None
    return net.eval(), entry["kind"]


def load_agent_bundle(path: str | Path) -> AgentBundle:
    """The agent network of a run dir (its ``checkpoints/latest.pt``) or of a ``.pt`` checkpoint file."""
    ckpt, file, sha256 = read_checkpoint(path)
    net, kind = agent_net_from_entry(ckpt["agent"], str(file))
    return AgentBundle(
        net=net,
        kind=kind,
        algo=str(ckpt["algo"]),
        env_id=str(ckpt["env_id"]),
        env_spec=dict(ckpt["env_spec"]),
        env_steps=int(ckpt["env_steps"]),
        checkpoint_path=str(file),
        checkpoint_sha256=sha256,
    )
