"""Shared helper of the algorithm tests: an algorithm built on CPU from its layered config, as `marlctl train` does."""
from __future__ import annotations

from typing import Any


def build_algo(algo: str, env_id: str, *overrides: str, seed: int = 0) -> Any:
    import torch
    from marlctl.envs import env_spec
    from marlctl.trainer.config import load_config
    from marlctl.trainer.registry import algorithm_spec

    cfg = load_config(algo, env_id, overrides=list(overrides), seed=seed)
    return algorithm_spec(algo).build(cfg, env_spec(env_id), torch.device("cpu"))
