"""The ``[ray]`` config section: where rollout workers run and how collection is bounded (imports no Ray)."""
from __future__ import annotations

from dataclasses import dataclass

from marlctl.trainer.errors import ConfigValueError

RAY_VERSION = "2.60.0"
"""The Ray release marlctl pins (pyproject's ``train`` extra); every node of a cluster runs this one."""


@dataclass(frozen=True)
class RayConfig:
    """Rollout and evaluation workers on a Ray cluster (``marlctl train --ray ...``); empty ``address`` = one process."""

    address: str = ""
    """``""``: today's single-process path (no Ray); ``local``: start Ray inside this process;
    ``HOST:PORT``: join a running cluster (``ray start --head`` printed the address); ``auto``: the cluster
    this machine is part of (a KubeRay RayJob's driver on the head)."""
    rollout_workers: int = 0
    """Rollout workers (Ray actors), each owning one batched env and a CPU copy of the agent networks."""
    envs_per_worker: int = 0
    """Environments in each worker's batched env (0 = ``env.num_envs``). Value methods: one worker task plays
    one episode per env and one learner iteration consumes one task; policy methods: one on-policy iteration
    is ``rollout_workers * envs_per_worker`` envs."""
    worker_cpus: float = 1.0
    """CPUs each worker actor reserves (Ray's ``num_cpus``; its PyTorch threads follow it)."""
    max_policy_lag: int = 16
    """Value methods: an episode whose policy is more than this many versions (learner iterations) behind
    the learner's is dropped and counted (``episodes_dropped{reason="policy_lag"}``). Policy methods collect
    synchronously and accept only the current version."""
    tasks_per_worker: int = 2
    """Value methods: collect tasks queued on each worker at once. With 2 a worker starts its next episodes
    the moment it returns the last ones, while the learner fetches and ingests them (the Ray round trip and the
    transfer leave the worker's critical path; RLlib's ``max_requests_in_flight_per_env_runner``); the queued
    task's weights are one learner iteration older. 1 = one at a time. Policy methods always run one."""
    connect_timeout_s: float = 20.0
    """Seconds to reach a ``HOST:PORT`` head before the run stops with an error."""
    max_worker_failures: int = 3
    """Consecutive failed tasks of one worker (crash, raise) before the run stops with that worker's error."""

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def validate(self) -> None:
        if self.address and self.rollout_workers < 1:
            raise ConfigValueError(f"--ray {self.address} needs --rollout-workers >= 1 (got {self.rollout_workers})")
        if not self.address and self.rollout_workers != 0:
            raise ConfigValueError(f"--rollout-workers {self.rollout_workers} needs --ray local or --ray HOST:PORT "
                                   "(without --ray, training runs in one process)")
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in (
            ("envs_per_worker", self.envs_per_worker >= 0), ("worker_cpus", self.worker_cpus > 0),
            ("max_policy_lag", self.max_policy_lag >= 0), ("tasks_per_worker", self.tasks_per_worker >= 1),
            ("connect_timeout_s", self.connect_timeout_s > 0),
            ("max_worker_failures", self.max_worker_failures >= 1)) if not ok]
        if bad:
            raise ConfigValueError(f"[ray] out of range: {', '.join(bad)}; valid: envs_per_worker >= 0 (0 = env.num_envs), "
                                   "worker_cpus > 0, max_policy_lag >= 0, tasks_per_worker >= 1, connect_timeout_s > 0, "
                                   "max_worker_failures >= 1")


def ray_flags(address: str | None, rollout_workers: int | None, envs_per_worker: int | None,
              worker_cpus: float | None, max_policy_lag: int | None) -> dict[str, object]:
    """The ``[ray]`` keys that ``marlctl train``'s flags set (``--ray none`` = back to one process)."""
    given = {"rollout_workers": rollout_workers, "envs_per_worker": envs_per_worker, "worker_cpus": worker_cpus,
             "max_policy_lag": max_policy_lag}
    out: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    if address is not None:
        address = address.strip()
        if address.lower() == "none":
            out.update(address="", rollout_workers=out.get("rollout_workers", 0))
        else:
            if address not in ("local", "auto"):
                from marlctl.trainer.distributed.cluster import parse_address

                parse_address(address)
            out["address"] = address
    return out


def with_flags(base: RayConfig, flags: dict[str, object]) -> RayConfig:
    """``base`` with the flags' keys replaced, validated (a resumed run's recorded section + new flags)."""
    import dataclasses

    cfg = dataclasses.replace(base, **flags)  # type: ignore[arg-type]
    cfg.validate()
    return cfg
