"""The Kubernetes objects of a team: per-agent Deployment, Services, PDB and HPA, the model PVC, the runner Job, mesh rules."""
from __future__ import annotations

from typing import Any

from marlctl.deploy.config import (
    ANNOTATION_PREFIX,
    EPISODE_HEADER,
    IMAGE_MODEL_DIR,
    MODEL_MOUNT,
    SHA_LABEL_LEN,
    RenderConfig,
    drain_grace_seconds,
)
from marlctl.deploy.model_check import ModelInfo


def agent_name(team: str, index: int) -> str:
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


def runner_args(cfg: RenderConfig, env_id: str, addresses: list[str]) -> list[str]:
    """Arguments of ``marlctl`` in the runner Job (tests run exactly these, locally)."""
    push = ["--pushgateway", cfg.pushgateway, "--push-job", "marlctl_runner"] if cfg.pushgateway else []
    return ["run", "--env", env_id, "--agents", ",".join(addresses), "--episodes", str(cfg.runner_episodes),
            "--concurrency", str(cfg.runner_concurrency), "--metrics-port", str(cfg.runner_metrics_port),
            "--on-agent-failure", "noop", "--connect-timeout", "120", *push]


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
        "metadata": {"name": agent_name(team, index), "labels": labels, "annotations": annotations},
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
            "name": agent_name(team, index),
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
        "metadata": {"name": f"{agent_name(team, index)}-headless", "labels": _selector(team, index)},
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
        "metadata": {"name": agent_name(team, index), "labels": _selector(team, index)},
        # maxUnavailable (not minAvailable) so a single-replica agent can still be drained off a node.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(team, index)}},
    }


def agent_hpa(cfg: RenderConfig, team: str, index: int) -> dict[str, Any]:
    """Scale one agent on live episodes and p99 decision latency (custom metrics via prometheus-adapter)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": agent_name(team, index), "labels": _selector(team, index)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": agent_name(team, index)},
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
    addresses = [f"{agent_name(team, i)}:{cfg.grpc_port}" for i in range(model.n_agents)]
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


def destination_rules(cfg: RenderConfig, model: ModelInfo, team: str) -> list[dict[str, Any]]:
    """Istio: hash unary calls on the episode-id header so an episode's calls reach one replica."""
    return [{
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": agent_name(team, i), "labels": _selector(team, i)},
        "spec": {
            "host": f"{agent_name(team, i)}.{cfg.namespace}.svc.cluster.local",
            "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": EPISODE_HEADER}}},
        },
    } for i in range(model.n_agents)]


def model_image_dockerfile(cfg: RenderConfig) -> str:
    return (
        "# Bakes the model into the agent service image (--model-source image). Build from this dir:\n"
        f"#   docker build --build-arg BASE=<marlctl-serve image> -t {cfg.image} .\n"
        "ARG BASE\n"
        "FROM ${BASE}\n"
        f"COPY --chown=10001:10001 model/ {IMAGE_MODEL_DIR}/\n"
    )
