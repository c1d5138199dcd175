"""marlctl.envs: one protocol for every environment (single and batched) and the registry that builds them."""
from marlctl.envs.base import BatchedEnv, BatchStep, Env, EnvFamily, EnvSpec, TimeStep
from marlctl.envs.registry import env_spec, list_families, make_batched_env, make_env, parse_env_id

__all__ = [
    "BatchStep",
    "BatchedEnv",
    "Env",
    "EnvFamily",
    "EnvSpec",
    "TimeStep",
    "env_spec",
    "list_families",
    "make_batched_env",
    "make_env",
    "parse_env_id",
]
