"""Renderer of a kustomize base for a team of agent services (`marlctl deploy render`).

From an exported model dir (manifest + one ONNX file per agent) it renders, per agent, a
Deployment + Service + PodDisruptionBudget + HorizontalPodAutoscaler; the model volume for
the chosen ``--model-source`` with its sha256 checked by an init container; a runner Job;
the Grafana dashboard; a Prometheus Operator PodMonitor and PrometheusRule (``monitoring/``),
a plain Prometheus scrape config and rule file (``prometheus/``), the prometheus-adapter rules
that feed the HPA (``prometheus-adapter/``) and an Istio DestinationRule for unary calls
(``mesh/``).

Everything is checked before anything is written; the output is staged in a temp dir next
to ``--out`` and renamed into place, so a refused render writes nothing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from marlctl.agents.onnx_io import MANIFEST_NAME
from marlctl.deploy.errors import DeployError, RenderInputError
from marlctl.deploy.fetch import check_model_url
from marlctl.deploy.model_check import ModelInfo, load_model_dir

MODEL_SOURCES = ("configmap", "pvc", "image", "url")
MODEL_MOUNT = "/models"
"""Where the model dir appears in the agent container (configmap, pvc and url sources)."""
IMAGE_MODEL_DIR = "/opt/marlctl/model"
"""Where ``--model-source image`` expects the model inside the image (see model-image/Dockerfile)."""
CONFIGMAP_MAX_BYTES = 1_000_000
"""A ConfigMap holds at most 1 MiB; bigger models need pvc, image or url."""
EPISODE_HEADER = "x-episode-id"
"""gRPC metadata key a unary client sets to its episode id, so a load balancer can hash on it."""
DRAIN_EXIT_MARGIN_S = 5
"""Seconds of the pod's termination grace kept back for the server to exit after its drain."""
SHA_LABEL_LEN = 32
"""Hex digits of the model sha256 in the ``marl/model-sha256`` label (label values hold 63 chars at most)."""
ANNOTATION_PREFIX = "marl"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
# Docker/OCI image reference: [host[:port]/]path[:tag][@sha256:digest], path lowercase.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)"
_IMAGE_REF = re.compile(
    rf"^(?P<name>{_HOST}?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)


@dataclass(frozen=True)
class RenderConfig:
    """Everything `marlctl deploy render` needs besides the model dir."""

    image: str
    """Agent service image (built from deploy/docker/Dockerfile.serve or Dockerfile.serve-cuda)."""
    namespace: str = "marl"
    """Kubernetes namespace of the team (a DNS-1123 label)."""
    replicas: int = 1
    """Replicas per agent Deployment (also the HPA's minimum)."""
    max_replicas: int = 8
    """HPA maximum per agent (raised to ``replicas`` when smaller)."""
    gpu: bool = False
    """Request one ``nvidia.com/gpu`` per agent pod and tolerate GPU node taints."""
    model_source: str = "configmap"
    """How the model reaches the pods: configmap | pvc | image | url."""
    model_url: str | None = None
    """Base URL of the model dir (``--model-source url`` only)."""
    team: str | None = None
    """Team name used in object names and the ``marl/team`` label; None derives it from the manifest."""
    runner_image: str | None = None
    """Image of the runner Job (needs the env's backend: the train image for SMAX/GRF); None = ``image``."""
    runner_env: str | None = None
    """Env id the runner Job plays; None = the manifest's env id."""
    runner_episodes: int = 100
    """Episodes the runner Job plays."""
    runner_concurrency: int = 4
    """Episodes the runner Job plays at once."""
    grpc_port: int = 50051
    """Container and Service port of the agent's gRPC API."""
    metrics_port: int = 9091
    """Container and Service port of the agent's Prometheus metrics."""
    runner_metrics_port: int = 9092
    """Container port of the runner's Prometheus metrics."""
    max_episodes: int = 1024
    """Live-episode bound per agent process (``marlctl serve --max-episodes``)."""
    cpu_request: str = "500m"
    """CPU request of an agent container (ONNX Runtime runs with one intra-op thread)."""
    cpu_limit: str = "1"
    """CPU limit of an agent container."""
    memory_request: str = "256Mi"
    """Memory request of an agent container."""
    memory_limit: str = "1Gi"
    """Memory limit of an agent container."""
    pvc_size: str = "1Gi"
    """Size of the model PersistentVolumeClaim (``--model-source pvc``)."""
    target_live_episodes: int = 64
    """HPA target: average live episodes per agent pod."""
    target_decision_p99: str = "5m"
    """HPA target: average per-pod p99 decision latency, a Kubernetes quantity in seconds ("5m" = 5 ms)."""
    termination_grace_seconds: int = 40
    """Pod termination grace: the preStop pause plus the server's drain of live episodes after SIGTERM."""
    prestop_sleep_seconds: int = 5
    """Pause before SIGTERM so Service endpoints drop the pod before it stops taking episodes."""
    scrape_interval: str = "15s"
    """Prometheus scrape interval for the PodMonitor and the plain scrape config."""
    extra_labels: dict[str, str] = field(default_factory=dict)
    """Extra labels on every object (kustomize ``labels``)."""


@dataclass(frozen=True)
class RenderResult:
    """What a render wrote."""

    out_dir: Path
    """The output dir (a kustomize base)."""
    team: str
    """The team name used."""
    files: list[str]
    """Paths written, relative to ``out_dir``."""
    model: ModelInfo
    """The checked model."""


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def parse_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference, or a clear error."""
    if not image or not image.strip():
        raise RenderInputError("--image is empty: give the agent service image, e.g. registry.example.com/marlctl-serve:0.1.0")
    m = _IMAGE_REF.match(image)
    if m is None:
        raise RenderInputError(
            f"--image {image!r} is not a valid image reference: expected [registry[:port]/]name[:tag][@sha256:digest] "
            "with a lowercase name, e.g. ghcr.io/acme/marlctl-serve:0.1.0"
        )
    return m.group("name"), m.group("tag"), m.group("digest")


def _tag_words(tag: str | None) -> set[str]:
    return set(re.split(r"[-_.]", tag.lower())) if tag else set()


def derive_team_name(manifest: dict[str, Any]) -> str:
    """A DNS-safe team name from the manifest's algorithm and env id (at most 40 chars)."""
    raw = f"{manifest['algorithm']}-{manifest['env_id']}".lower()
    name = re.sub(r"[^a-z0-9]+", "-", raw).strip("-")[:40].strip("-")
    if not name or not name[0].isalpha():
        name = f"team-{name}".strip("-")[:40].strip("-")
    return name


def check_config(cfg: RenderConfig, model: ModelInfo) -> str:
    """Raise ``RenderInputError`` naming the bad option; return the team name."""
    _, tag, _ = parse_image(cfg.image)
    if cfg.gpu and "cpu" in _tag_words(tag):
        raise RenderInputError(
            f"--gpu with image {cfg.image!r} whose tag says cpu: use a CUDA image "
            "(deploy/docker/Dockerfile.serve-cuda, e.g. marlctl-serve:0.1.0-cuda) or drop --gpu"
        )
    if cfg.runner_image is not None:
        parse_image(cfg.runner_image)
    for opt, value in (("--namespace", cfg.namespace), ("--team", cfg.team)):
        if value is not None and (not _DNS_LABEL.match(value) or len(value) > 63):
            raise RenderInputError(
                f"{opt} {value!r} is not a DNS-1123 label: lowercase letters, digits and '-', "
                "starting with a letter, at most 63 chars"
            )
    team = cfg.team or derive_team_name(model.manifest)
    longest = f"{team}-agent-{model.n_agents - 1}-headless"
    if len(longest) > 63:
        raise RenderInputError(f"--team {team!r} is too long: object names like {longest!r} must stay within 63 chars")
    if cfg.model_source not in MODEL_SOURCES:
        raise RenderInputError(f"--model-source {cfg.model_source!r} is not one of {', '.join(MODEL_SOURCES)}")
    if cfg.model_source == "url":
        if not cfg.model_url:
            raise RenderInputError("--model-source url needs --model-url (the http(s) URL of the model dir)")
        try:
            check_model_url(cfg.model_url)
        except DeployError as exc:
            raise RenderInputError(str(exc)) from None
    elif cfg.model_url:
        raise RenderInputError(f"--model-url is only used with --model-source url (got --model-source {cfg.model_source})")
    if cfg.model_source == "configmap":
        total = sum(p.stat().st_size for p in model.agent_files()) + (model.path / MANIFEST_NAME).stat().st_size
        if total > CONFIGMAP_MAX_BYTES:
            raise RenderInputError(
                f"the model is {total} bytes, more than a ConfigMap holds ({CONFIGMAP_MAX_BYTES}): "
                "use --model-source pvc, image or url"
            )
    for opt, number, low in (
        ("--replicas", cfg.replicas, 1),
        ("--max-replicas", cfg.max_replicas, 1),
        ("--episodes", cfg.runner_episodes, 1),
        ("--concurrency", cfg.runner_concurrency, 1),
        ("--max-episodes", cfg.max_episodes, 1),
        ("--target-live-episodes", cfg.target_live_episodes, 1),
    ):
        if number < low:
            raise RenderInputError(f"{opt} must be >= {low}, got {number}")
    ports = {"--grpc-port": cfg.grpc_port, "--metrics-port": cfg.metrics_port, "--runner-metrics-port": cfg.runner_metrics_port}
    for opt, port in ports.items():
        if not 1 <= port <= 65535:
            raise RenderInputError(f"{opt} must be in 1..65535, got {port}")
    if cfg.grpc_port == cfg.metrics_port:
        raise RenderInputError(f"--grpc-port and --metrics-port must differ (both {cfg.grpc_port})")
    for opt, q in (
        ("--cpu-request", cfg.cpu_request), ("--cpu-limit", cfg.cpu_limit), ("--memory-request", cfg.memory_request),
        ("--memory-limit", cfg.memory_limit), ("--pvc-size", cfg.pvc_size), ("--target-decision-p99", cfg.target_decision_p99),
    ):
        if not _QUANTITY.match(q):
            raise RenderInputError(f"{opt} {q!r} is not a Kubernetes quantity such as 500m, 1, 256Mi or 1Gi")
    if cfg.prestop_sleep_seconds < 0 or drain_grace_seconds(cfg) < 1:
        raise RenderInputError(
            f"--termination-grace ({cfg.termination_grace_seconds}s) must exceed the preStop pause "
            f"({cfg.prestop_sleep_seconds}s) plus {DRAIN_EXIT_MARGIN_S}s so live episodes get time to drain"
        )
    return team


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------


def _agent_name(team: str, index: int) -> str:
    return f"{team}-agent-{index}"


def _selector(team: str, index: int) -> dict[str, str]:
    return {"marl/team": team, "marl/agent": str(index)}


def _agent_labels(team: str, index: int, sha: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "marlctl-agent",
        "app.kubernetes.io/component": "agent",
        "marl/role": "agent",
        **_selector(team, index),
        "marl/model-sha256": sha[:SHA_LABEL_LEN],
    }


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security_context() -> dict[str, Any]:
    # uid/gid 10001 = the `marl` user of the Dockerfiles.
    return {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _model_dir_in_pod(cfg: RenderConfig) -> str:
    return IMAGE_MODEL_DIR if cfg.model_source == "image" else MODEL_MOUNT


def _model_volume(cfg: RenderConfig, team: str) -> list[dict[str, Any]]:
    if cfg.model_source == "configmap":
        # kustomize's configMapGenerator appends a content hash to this name and rewrites the reference.
        return [{"name": "model", "configMap": {"name": f"{team}-model"}}]
    if cfg.model_source == "pvc":
        return [{"name": "model", "persistentVolumeClaim": {"claimName": f"{team}-model", "readOnly": True}}]
    if cfg.model_source == "url":
        return [{"name": "model", "emptyDir": {"sizeLimit": "2Gi"}}]
    return []


def _init_container(cfg: RenderConfig, model: ModelInfo, index: int) -> dict[str, Any]:
    """The init container that checks (or fetches, then checks) this agent's model against the pinned hash."""
    if cfg.model_source == "url":
        args = ["deploy", "fetch-model", str(cfg.model_url), MODEL_MOUNT, "--agent", str(index),
                "--manifest-sha256", model.manifest_sha256]
        mounts = [{"name": "model", "mountPath": MODEL_MOUNT}]
        name = "fetch-model"
    else:
        args = ["deploy", "verify-model", _model_dir_in_pod(cfg), "--agent", str(index),
                "--manifest-sha256", model.manifest_sha256]
        mounts = [{"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}] if cfg.model_source != "image" else []
        name = "verify-model"
    return {
        "name": name,
        "image": cfg.image,
        "command": ["marlctl"],
        "args": args,
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "securityContext": _security_context(),
        "volumeMounts": mounts,
    }


def serve_args(cfg: RenderConfig, index: int, model_dir: str) -> list[str]:
    """Arguments of ``marlctl`` in the agent container (tests run exactly these, locally)."""
    return ["serve", model_dir, "--agent", str(index), "--host", "0.0.0.0", "--port", str(cfg.grpc_port),
            "--metrics-port", str(cfg.metrics_port), "--max-episodes", str(cfg.max_episodes),
            "--grace", str(drain_grace_seconds(cfg)), "--device", "cuda" if cfg.gpu else "cpu"]


def drain_grace_seconds(cfg: RenderConfig) -> int:
    """The server's SIGTERM drain: what the pod's grace leaves after the preStop pause, minus a margin to exit."""
    return cfg.termination_grace_seconds - cfg.prestop_sleep_seconds - DRAIN_EXIT_MARGIN_S


def runner_args(cfg: RenderConfig, env_id: str, addresses: list[str]) -> list[str]:
    """Arguments of ``marlctl`` in the runner Job (tests run exactly these, locally)."""
    return ["run", "--env", env_id, "--agents", ",".join(addresses), "--episodes", str(cfg.runner_episodes),
            "--concurrency", str(cfg.runner_concurrency), "--metrics-port", str(cfg.runner_metrics_port),
            "--on-agent-failure", "noop", "--connect-timeout", "120"]


def _grpc_probe(port: int, period: int, failures: int) -> dict[str, Any]:
    # Native gRPC probe (GA since Kubernetes 1.27) on grpc.health.v1 with the overall service "".
    return {"grpc": {"port": port}, "periodSeconds": period, "timeoutSeconds": 2, "failureThreshold": failures}


def agent_deployment(cfg: RenderConfig, model: ModelInfo, team: str, index: int) -> dict[str, Any]:
    entry = model.agent_entry(index)
    labels = _agent_labels(team, index, entry["sha256"])
    resources_: dict[str, Any] = {
        "requests": {"cpu": cfg.cpu_request, "memory": cfg.memory_request},
        "limits": {"cpu": cfg.cpu_limit, "memory": cfg.memory_limit},
    }
    if cfg.gpu:
        resources_["limits"]["nvidia.com/gpu"] = "1"
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    if cfg.model_source != "image":
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True})
    container = {
        "name": "agent",
        "image": cfg.image,
        "command": ["marlctl"],
        "args": serve_args(cfg, index, _model_dir_in_pod(cfg)),
        "ports": [
            {"name": "grpc", "containerPort": cfg.grpc_port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": cfg.metrics_port, "protocol": "TCP"},
        ],
        "env": [{"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": resources_,
        "startupProbe": _grpc_probe(cfg.grpc_port, period=2, failures=60),
        "readinessProbe": _grpc_probe(cfg.grpc_port, period=5, failures=2),
        "livenessProbe": _grpc_probe(cfg.grpc_port, period=10, failures=3),
        "lifecycle": {"preStop": {"sleep": {"seconds": cfg.prestop_sleep_seconds}}},
        "securityContext": _security_context(),
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": cfg.termination_grace_seconds,
        "securityContext": _pod_security_context(),
        "initContainers": [_init_container(cfg, model, index)],
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}, *_model_volume(cfg, team)],
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": _selector(team, index)},
        }],
    }
    if cfg.gpu:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    annotations = {
        f"{ANNOTATION_PREFIX}/model-sha256": entry["sha256"],
        f"{ANNOTATION_PREFIX}/manifest-sha256": model.manifest_sha256,
        f"{ANNOTATION_PREFIX}/algorithm": str(model.manifest["algorithm"]),
        f"{ANNOTATION_PREFIX}/env-id": str(model.manifest["env_id"]),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": _agent_name(team, index), "labels": labels, "annotations": annotations},
        "spec": {
            "replicas": cfg.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _selector(team, index)},
            # Surge first: a rolling update never drops the agent's capacity below the HPA's count.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
        },
    }


def agent_service(cfg: RenderConfig, model: ModelInfo, team: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": _agent_name(team, index),
            "labels": _agent_labels(team, index, model.agent_entry(index)["sha256"]),
            "annotations": {f"{ANNOTATION_PREFIX}/episode-header": EPISODE_HEADER},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(team, index),
            "ports": [
                {"name": "grpc", "port": cfg.grpc_port, "targetPort": "grpc", "protocol": "TCP",
                 "appProtocol": "kubernetes.io/h2c"},
                {"name": "metrics", "port": cfg.metrics_port, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def agent_headless_service(cfg: RenderConfig, team: str, index: int) -> dict[str, Any]:
    """Pod IPs in DNS, for client-side balancing (gRPC round_robin) or an Envoy STRICT_DNS cluster."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{_agent_name(team, index)}-headless", "labels": _selector(team, index)},
        "spec": {
            "clusterIP": "None",
            "selector": _selector(team, index),
            "ports": [{"name": "grpc", "port": cfg.grpc_port, "targetPort": "grpc", "protocol": "TCP",
                       "appProtocol": "kubernetes.io/h2c"}],
        },
    }


def agent_pdb(team: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": _agent_name(team, index), "labels": _selector(team, index)},
        # maxUnavailable (not minAvailable) so a single-replica agent can still be drained off a node.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(team, index)}},
    }


def agent_hpa(cfg: RenderConfig, team: str, index: int) -> dict[str, Any]:
    """Scale one agent on live episodes and p99 decision latency (custom metrics via prometheus-adapter)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": _agent_name(team, index), "labels": _selector(team, index)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": _agent_name(team, index)},
            "minReplicas": cfg.replicas,
            "maxReplicas": max(cfg.max_replicas, cfg.replicas),
            "metrics": [
                {"type": "Pods", "pods": {"metric": {"name": "marl_agent_live_episodes"},
                                          "target": {"type": "AverageValue", "averageValue": str(cfg.target_live_episodes)}}},
                {"type": "Pods", "pods": {"metric": {"name": "marl_agent_decision_seconds_p99"},
                                          "target": {"type": "AverageValue", "averageValue": cfg.target_decision_p99}}},
            ],
            # Scaling down ends the streams of the removed pods' episodes: do it slowly.
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": 600, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]},
                "scaleUp": {"stabilizationWindowSeconds": 30, "policies": [{"type": "Percent", "value": 100, "periodSeconds": 30}]},
            },
        },
    }


def model_pvc(cfg: RenderConfig, team: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"{team}-model", "labels": {"marl/team": team}},
        # Many pods read it; it is written once when the model is copied in (see deploy/README.md).
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": cfg.pvc_size}}},
    }


def runner_job(cfg: RenderConfig, model: ModelInfo, team: str) -> dict[str, Any]:
    addresses = [f"{_agent_name(team, i)}:{cfg.grpc_port}" for i in range(model.n_agents)]
    labels = {"app.kubernetes.io/name": "marlctl-runner", "app.kubernetes.io/component": "runner",
              "marl/team": team, "marl/role": "runner"}
    container = {
        "name": "runner",
        "image": cfg.runner_image or cfg.image,
        "command": ["marlctl"],
        "args": runner_args(cfg, cfg.runner_env or str(model.manifest["env_id"]), addresses),
        "ports": [{"name": "metrics", "containerPort": cfg.runner_metrics_port, "protocol": "TCP"}],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "HOME", "value": "/tmp"}],
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
        "securityContext": _security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{team}-runner", "labels": labels},
        "spec": {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security_context(),
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
                },
            },
        },
    }


def namespace_object(cfg: RenderConfig) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": cfg.namespace}}


def pod_monitor(cfg: RenderConfig, team: str) -> dict[str, Any]:
    """Prometheus Operator PodMonitor for the agents and the runner (labels team/role/namespace/pod)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": team, "labels": {"marl/team": team}},
        "spec": {
            "selector": {"matchLabels": {"marl/team": team}},
            "podMetricsEndpoints": [{
                "port": "metrics",
                "interval": cfg.scrape_interval,
                "relabelings": [
                    {"sourceLabels": ["__meta_kubernetes_pod_label_marl_team"], "targetLabel": "team"},
                    {"sourceLabels": ["__meta_kubernetes_pod_label_marl_role"], "targetLabel": "role"},
                ],
            }],
        },
    }


def scrape_config(cfg: RenderConfig, team: str) -> dict[str, Any]:
    """A plain Prometheus config (no operator): pod discovery in the namespace, kept by team and port name."""
    return {
        "scrape_configs": [{
            "job_name": f"marl-{team}",
            "scrape_interval": cfg.scrape_interval,
            "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [cfg.namespace]}}],
            "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_label_marl_team"], "regex": team, "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "metrics", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Succeeded|Failed", "action": "drop"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_label_marl_team"], "target_label": "team"},
                {"source_labels": ["__meta_kubernetes_pod_label_marl_role"], "target_label": "role"},
            ],
        }]
    }


def adapter_rules() -> list[dict[str, Any]]:
    """prometheus-adapter rules exposing the HPA's two per-pod custom metrics."""
    resources_ = {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
    return [
        {
            "seriesQuery": 'marl_agent_live_episodes{namespace!="",pod!=""}',
            "resources": resources_,
            "name": {"matches": "^marl_agent_live_episodes$", "as": "marl_agent_live_episodes"},
            "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
        },
        {
            "seriesQuery": 'marl_agent_decision_seconds_bucket{namespace!="",pod!=""}',
            "resources": resources_,
            "name": {"matches": "^marl_agent_decision_seconds_bucket$", "as": "marl_agent_decision_seconds_p99"},
            "metricsQuery": "histogram_quantile(0.99, sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>, le))",
        },
    ]


def destination_rules(cfg: RenderConfig, model: ModelInfo, team: str) -> list[dict[str, Any]]:
    """Istio: hash unary calls on the episode-id header so an episode's calls reach one replica."""
    return [{
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": _agent_name(team, i), "labels": _selector(team, i)},
        "spec": {
            "host": f"{_agent_name(team, i)}.{cfg.namespace}.svc.cluster.local",
            "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": EPISODE_HEADER}}},
        },
    } for i in range(model.n_agents)]


def dashboard_json() -> str:
    """The Grafana dashboard shipped with the package (deploy/grafana/dashboard.json)."""
    return resources.files("marlctl.deploy").joinpath("grafana/dashboard.json").read_text(encoding="utf-8")


def rules_yaml() -> str:
    """The Prometheus recording/alerting rules shipped with the package (deploy/prometheus/rules.yaml)."""
    return resources.files("marlctl.deploy").joinpath("prometheus/rules.yaml").read_text(encoding="utf-8")


def prometheus_rule(team: str) -> dict[str, Any]:
    """The same rule groups as a Prometheus Operator PrometheusRule."""
    import yaml

    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": team, "labels": {"marl/team": team}},
        "spec": {"groups": yaml.safe_load(rules_yaml())["groups"]},
    }


def _model_image_dockerfile(cfg: RenderConfig) -> str:
    return (
        "# Bakes the model into the agent service image (--model-source image). Build from this dir:\n"
        f"#   docker build --build-arg BASE=<marlctl-serve image> -t {cfg.image} .\n"
        "ARG BASE\n"
        "FROM ${BASE}\n"
        f"COPY --chown=10001:10001 model/ {IMAGE_MODEL_DIR}/\n"
    )


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _yaml(docs: list[dict[str, Any]], header: str) -> bytes:
    import yaml

    body = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=120)
    return (header + body).encode()


def render_files(model: ModelInfo, cfg: RenderConfig, team: str) -> dict[str, bytes]:
    """Every output file (relative path -> bytes) of the kustomize base; pure, writes nothing."""
    header = (
        f"# Rendered by `marlctl deploy render` for team {team}: {model.manifest['algorithm']} on "
        f"{model.manifest['env_id']}, manifest sha256 {model.manifest_sha256}.\n"
        "# Re-render rather than edit; customise with a kustomize overlay.\n"
    )
    files: dict[str, bytes] = {}
    resources_list = ["namespace.yaml"]
    files["namespace.yaml"] = _yaml([namespace_object(cfg)], header)
    for i in range(model.n_agents):
        name = f"agent-{i}.yaml"
        docs = [agent_deployment(cfg, model, team, i), agent_service(cfg, model, team, i),
                agent_headless_service(cfg, team, i), agent_pdb(team, i), agent_hpa(cfg, team, i)]
        files[name] = _yaml(docs, header)
        resources_list.append(name)
    if cfg.model_source == "pvc":
        files["model-pvc.yaml"] = _yaml([model_pvc(cfg, team)], header)
        resources_list.append("model-pvc.yaml")
    files["runner-job.yaml"] = _yaml([runner_job(cfg, model, team)], header)
    resources_list.append("runner-job.yaml")

    model_files = {f"model/{p.name}": p.read_bytes() for p in [model.path / MANIFEST_NAME, *model.agent_files()]}
    generators: list[dict[str, Any]] = []
    if cfg.model_source == "configmap":
        files.update(model_files)
        generators.append({"name": f"{team}-model", "files": sorted(model_files)})
    elif cfg.model_source == "image":
        files.update({f"model-image/{k}": v for k, v in model_files.items()})
        files["model-image/Dockerfile"] = _model_image_dockerfile(cfg).encode()
    files["grafana/dashboard.json"] = dashboard_json().encode()
    generators.append({
        "name": f"{team}-dashboard",
        "files": ["marlctl-team.json=grafana/dashboard.json"],
        # The Grafana sidecar (kube-prometheus-stack) loads ConfigMaps with this label.
        "options": {"labels": {"grafana_dashboard": "1"}, "disableNameSuffixHash": True},
    })
    common_labels = {"app.kubernetes.io/part-of": "marlctl", "marl/team": team, **cfg.extra_labels}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": cfg.namespace,
        "labels": [{"pairs": common_labels, "includeSelectors": False}],
        "resources": resources_list,
        "configMapGenerator": generators,
    }
    files["kustomization.yaml"] = _yaml([kustomization], header)

    sub = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": cfg.namespace}
    files["monitoring/podmonitor.yaml"] = _yaml([pod_monitor(cfg, team)], header)
    files["monitoring/prometheusrule.yaml"] = _yaml([prometheus_rule(team)], header)
    files["monitoring/kustomization.yaml"] = _yaml([{**sub, "resources": ["podmonitor.yaml", "prometheusrule.yaml"]}], header)
    files["mesh/destinationrules.yaml"] = _yaml(destination_rules(cfg, model, team), header)
    files["mesh/kustomization.yaml"] = _yaml([{**sub, "resources": ["destinationrules.yaml"]}], header)
    files["prometheus/scrape-config.yaml"] = _yaml([scrape_config(cfg, team)], header)
    files["prometheus/rules.yaml"] = rules_yaml().encode()
    files["prometheus-adapter/rules.yaml"] = _yaml([{"rules": adapter_rules()}], header)
    files["prometheus-adapter/values.yaml"] = _yaml([{"rules": {"default": True, "custom": adapter_rules()}}], header)
    files["render.json"] = (json.dumps({
        "team": team, "namespace": cfg.namespace, "image": cfg.image, "model_source": cfg.model_source,
        "manifest_sha256": model.manifest_sha256, "n_agents": model.n_agents,
        "agents": [{"service": _agent_name(team, i), "sha256": model.agent_entry(i)["sha256"]} for i in range(model.n_agents)],
    }, indent=2) + "\n").encode()
    return files


def write_tree(files: dict[str, bytes], out_dir: Path, force: bool) -> None:
    """Stage ``files`` in a temp dir beside ``out_dir``, then rename it into place (replacing it with ``force``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RenderInputError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise RenderInputError(f"--out {out_dir} exists and is not empty: choose a new dir or pass --force to replace it")
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=parent))
    try:
        for rel, data in files.items():
            path = stage / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        os.chmod(stage, 0o755)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=parent))
            os.replace(out_dir, old / "tree")
            os.replace(stage, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def render(model_dir: str | Path, out_dir: str | Path, cfg: RenderConfig, force: bool = False) -> RenderResult:
    """Check the model and the options, render the kustomize base and write it atomically."""
    model = load_model_dir(model_dir)  # manifest schema + every agent file's size and sha256
    team = check_config(cfg, model)
    files = render_files(model, cfg, team)
    out = Path(out_dir)
    write_tree(files, out, force)
    return RenderResult(out_dir=out, team=team, files=sorted(files), model=model)
