"""KubeRay ``RayJob`` for one training run (``marlctl deploy render-train``): the learner on the head, rollout workers
in a worker group, the run dir on a volume.

The head pod runs the job's driver, ``marlctl train --ray auto`` (the learner: replay buffer, optimizer, GPU with
``--gpu``); it starts Ray with ``num-cpus: 0`` so every rollout worker actor lands on a worker pod, one actor
per pod (``worker_cpus`` CPUs each). The run dir lives on a PersistentVolumeClaim mounted at ``/runs`` on the
head: when the job is retried (``backoffLimit``, a new cluster each time) the entrypoint finds the run's
``latest.pt`` and resumes it. The head serves the run's ``marl_train_*`` metrics (PodMonitor in
``monitoring/``) and the training dashboard ships as a Grafana ConfigMap. Everything is checked (the training
config is resolved exactly as ``marlctl train`` would) before anything is written; the tree is staged and
renamed into place, so a refused render writes nothing.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from marlctl.deploy.config import _DNS_LABEL, _QUANTITY, derive_team_name, parse_image
from marlctl.deploy.errors import RenderInputError

RUNS_MOUNT = "/runs"
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}


@dataclass(frozen=True)
class TrainRenderConfig:
    """Everything `marlctl deploy render-train` needs."""

    algo: str
    """Algorithm (``--algo`` of ``marlctl train``)."""
    env_id: str
    """Environment id."""
    steps: int
    """Training budget in env steps."""
    image: str
    """Training image (deploy/docker/Dockerfile.train, or Dockerfile.train-cuda with ``gpu``)."""
    workers: int
    """Rollout workers: one worker pod (and one Ray actor) each."""
    gpu: bool = False
    """One ``nvidia.com/gpu`` for the learner on the head (``--device cuda``)."""
    overrides: tuple[str, ...] = ()
    """``--set section.key=value`` for the run's config (checked here)."""
    seed: int = 0
    """Run seed."""
    namespace: str = "marl"
    """Kubernetes namespace."""
    name: str | None = None
    """RayJob name and run dir name (default: from the algorithm and env id)."""
    envs_per_worker: int = 0
    """Batched envs per worker (0 = the config's ``env.num_envs``)."""
    worker_cpus: float = 1.0
    """CPUs of each worker pod (its actor reserves them)."""
    worker_memory: str = "4Gi"
    """Memory of each worker pod."""
    head_cpus: str = "2"
    """CPUs of the head pod (the learner and the Ray head processes)."""
    head_memory: str = "8Gi"
    """Memory of the head pod (the replay buffer lives here)."""
    runs_size: str = "20Gi"
    """Size of the run-dir PersistentVolumeClaim."""
    storage_class: str | None = None
    """StorageClass of the run-dir claim (None: the cluster's default)."""
    metrics_port: int = 9100
    """Port of the learner's Prometheus metrics on the head."""
    backoff_limit: int = 3
    """Job retries (each one resumes the run from its last checkpoint)."""
    extra_labels: dict[str, str] = field(default_factory=dict)
    """Labels added to every object."""


@dataclass(frozen=True)
class RenderTrainResult:
    out_dir: Path
    name: str
    files: list[str]
    entrypoint: str


def _check(cfg: TrainRenderConfig) -> tuple[str, Any]:
    """The job name and the resolved ``TrainConfig``, or a ``RenderInputError`` naming the bad option."""
    parse_image(cfg.image)
    name = cfg.name or derive_team_name({"algorithm": cfg.algo, "env_id": cfg.env_id})
    for opt, value in (("--name", name), ("--namespace", cfg.namespace)):
        if not _DNS_LABEL.match(value) or len(value) > 40:
            raise RenderInputError(f"{opt} {value!r} is not a DNS-1123 label of at most 40 chars: lowercase letters, "
                                   "digits and '-', starting with a letter")
    for opt, value in (("--worker-memory", cfg.worker_memory), ("--head-cpus", cfg.head_cpus),
                       ("--head-memory", cfg.head_memory), ("--runs-size", cfg.runs_size)):
        if not _QUANTITY.match(value):
            raise RenderInputError(f"{opt} {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")
    if cfg.workers < 1:
        raise RenderInputError(f"--workers {cfg.workers}: a RayJob needs at least 1 rollout worker")
    if cfg.steps < 1:
        raise RenderInputError(f"--steps {cfg.steps}: the training budget must be >= 1 env step")
    if not 0 < cfg.metrics_port < 65536 or cfg.metrics_port in HEAD_PORTS.values():
        raise RenderInputError(f"--metrics-port {cfg.metrics_port}: valid 1..65535, not one of the Ray head's ports "
                               f"{sorted(HEAD_PORTS.values())}")
    if cfg.backoff_limit < 0:
        raise RenderInputError(f"--backoff-limit {cfg.backoff_limit} must be >= 0")
    try:
        from marlctl.trainer.config import load_config
    except ImportError as exc:  # pragma: no cover - a serve-only install
        raise RenderInputError(f"render-train resolves the training config and needs marlctl[train]: {exc}") from None
    try:
        from marlctl.envs import env_spec

        env_spec(cfg.env_id)  # an unknown id or option names the valid ones
        train_cfg = load_config(cfg.algo, cfg.env_id, overrides=[*cfg.overrides, *_ray_overrides(cfg)],
                                steps=cfg.steps, seed=cfg.seed, device="cuda" if cfg.gpu else "cpu")
    except ValueError as exc:  # unknown algorithm / env id / config key, out-of-range value
        raise RenderInputError(str(exc)) from None
    return name, train_cfg


def _ray_overrides(cfg: TrainRenderConfig) -> list[str]:
    return ["ray.address=auto", f"ray.rollout_workers={cfg.workers}", f"ray.worker_cpus={cfg.worker_cpus:g}",
            f"ray.envs_per_worker={cfg.envs_per_worker}"]


def entrypoint(cfg: TrainRenderConfig, name: str) -> str:
    """The job's driver command: resume the run when its volume already holds a checkpoint, else start it."""
    run = f"{RUNS_MOUNT}/{name}"
    common = ["--ray", "auto", "--rollout-workers", str(cfg.workers), "--metrics-port", str(cfg.metrics_port)]
    start = ["marlctl", "train", "--algo", cfg.algo, "--env", cfg.env_id, "--steps", str(cfg.steps), "--seed",
             str(cfg.seed), "--device", "cuda" if cfg.gpu else "cpu", "--out", run, *common,
             "--worker-cpus", f"{cfg.worker_cpus:g}", "--envs-per-worker", str(cfg.envs_per_worker)]
    for item in cfg.overrides:
        start += ["--set", item]
    resume = ["marlctl", "train", "--resume", run, "--steps", str(cfg.steps), *common]
    script = (f"if [ -f {shlex.quote(run + '/checkpoints/latest.pt')} ]; then exec {shlex.join(resume)}; "
              f"else exec {shlex.join(start)}; fi")
    return f"sh -c {shlex.quote(script)}"


def _labels(cfg: TrainRenderConfig, name: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "marlctl", "app.kubernetes.io/component": "training", "marl/run": name,
            **cfg.extra_labels}


def _pod_security() -> dict[str, Any]:
    # The training images run as uid 10001; fsGroup makes the run-dir volume writable for it.
    return {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def head_template(cfg: TrainRenderConfig, name: str) -> dict[str, Any]:
    resources_: dict[str, Any] = {"requests": {"cpu": cfg.head_cpus, "memory": cfg.head_memory},
                                  "limits": {"cpu": cfg.head_cpus, "memory": cfg.head_memory}}
    spec: dict[str, Any] = {
        "securityContext": _pod_security(),
        "containers": [{
            "name": "ray-head",
            "image": cfg.image,
            "resources": resources_,
            "ports": [*({"name": k, "containerPort": v} for k, v in HEAD_PORTS.items()),
                      {"name": "metrics", "containerPort": cfg.metrics_port}],
            "volumeMounts": [{"name": "runs", "mountPath": RUNS_MOUNT}],
            "securityContext": _container_security(),
        }],
        "volumes": [{"name": "runs", "persistentVolumeClaim": {"claimName": f"{name}-runs"}}],
    }
    if cfg.gpu:
        resources_["limits"]["nvidia.com/gpu"] = 1
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    labels = {**_labels(cfg, name), "marl/role": "learner"}
    return {"metadata": {"labels": labels}, "spec": spec}


def worker_template(cfg: TrainRenderConfig, name: str) -> dict[str, Any]:
    cpu = f"{cfg.worker_cpus:g}"
    return {
        "metadata": {"labels": {**_labels(cfg, name), "marl/role": "rollout-worker"}},
        "spec": {
            "securityContext": _pod_security(),
            "containers": [{
                "name": "ray-worker",
                "image": cfg.image,
                "resources": {"requests": {"cpu": cpu, "memory": cfg.worker_memory},
                              "limits": {"cpu": cpu, "memory": cfg.worker_memory}},
                "securityContext": _container_security(),
            }],
        },
    }


def rayjob(cfg: TrainRenderConfig, name: str) -> dict[str, Any]:
    from marlctl.trainer.distributed.settings import RAY_VERSION

    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "labels": _labels(cfg, name)},
        "spec": {
            "entrypoint": entrypoint(cfg, name),
            "submissionMode": "K8sJobMode",
            "backoffLimit": cfg.backoff_limit,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "headGroupSpec": {
                    # num-cpus 0: no rollout worker actor is placed beside the learner.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": head_template(cfg, name),
                },
                "workerGroupSpecs": [{
                    "groupName": "rollout",
                    "replicas": cfg.workers,
                    "minReplicas": cfg.workers,
                    "maxReplicas": cfg.workers,
                    "rayStartParams": {"num-cpus": f"{cfg.worker_cpus:g}"},
                    "template": worker_template(cfg, name),
                }],
            },
        },
    }


def runs_pvc(cfg: TrainRenderConfig, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": cfg.runs_size}}}
    if cfg.storage_class:
        spec["storageClassName"] = cfg.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"{name}-runs", "labels": _labels(cfg, name)}, "spec": spec}


def learner_pod_monitor(cfg: TrainRenderConfig, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": f"{name}-learner", "labels": {"marl/run": name}},
        "spec": {"selector": {"matchLabels": {"marl/run": name, "marl/role": "learner"}},
                 "podMetricsEndpoints": [{"port": "metrics", "interval": "15s",
                                          "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_label_marl_run"],
                                                           "targetLabel": "run"}]}]},
    }


def train_dashboard_json() -> str:
    """The training Grafana dashboard shipped with the package (deploy/grafana/train-dashboard.json)."""
    return resources.files("marlctl.deploy").joinpath("grafana/train-dashboard.json").read_text(encoding="utf-8")


def render_train_files(cfg: TrainRenderConfig) -> tuple[str, dict[str, bytes], str]:
    """(name, files relative path -> bytes, entrypoint); pure, writes nothing."""
    import yaml

    name, train_cfg = _check(cfg)
    header = (f"# Rendered by `marlctl deploy render-train`: {cfg.algo} on {cfg.env_id}, {cfg.steps} env steps, "
              f"{cfg.workers} rollout workers.\n# Re-render rather than edit; customise with a kustomize overlay.\n")

    def dump(docs: list[dict[str, Any]]) -> bytes:
        return (header + yaml.safe_dump_all(docs, sort_keys=False, width=120)).encode()

    sub = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": cfg.namespace}
    files = {
        "rayjob.yaml": dump([rayjob(cfg, name)]),
        "runs-pvc.yaml": dump([runs_pvc(cfg, name)]),
        "grafana/train-dashboard.json": train_dashboard_json().encode(),
        "kustomization.yaml": dump([{**sub, "resources": ["runs-pvc.yaml", "rayjob.yaml"], "configMapGenerator": [{
            "name": f"{name}-train-dashboard", "files": ["marlctl-train.json=grafana/train-dashboard.json"],
            "options": {"labels": {"grafana_dashboard": "1"}, "disableNameSuffixHash": True}}]}]),
        "monitoring/podmonitor.yaml": dump([learner_pod_monitor(cfg, name)]),
        "monitoring/kustomization.yaml": dump([{**sub, "resources": ["podmonitor.yaml"]}]),
        "train-config.json": (json.dumps(train_cfg.to_dict(), indent=2) + "\n").encode(),
    }
    return name, files, entrypoint(cfg, name)


def render_train(cfg: TrainRenderConfig, out: Path, force: bool = False) -> RenderTrainResult:
    """Check, then write the kustomize base to ``out`` atomically (nothing is written on a refusal)."""
    from marlctl.deploy.render import write_tree

    name, files, command = render_train_files(cfg)
    write_tree(files, out, force)
    return RenderTrainResult(out_dir=out, name=name, files=sorted(files), entrypoint=command)
