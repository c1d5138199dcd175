"""Options of `marlctl deploy render` (one dataclass) and their checks, which name the bad option and what is valid."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from marlctl.agents.onnx_io import MANIFEST_NAME
from marlctl.deploy.errors import DeployError, RenderInputError
from marlctl.deploy.fetch import check_model_url
from marlctl.deploy.model_check import ModelInfo

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
    pushgateway: str | None = None
    """Prometheus Pushgateway URL the runner Job pushes its final metrics to (``marlctl run --pushgateway``): the
    Job's own /metrics endpoint is gone when it completes. None: no push."""
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


def drain_grace_seconds(cfg: RenderConfig) -> int:
    """The server's SIGTERM drain: what the pod's grace leaves after the preStop pause, minus a margin to exit."""
    return cfg.termination_grace_seconds - cfg.prestop_sleep_seconds - DRAIN_EXIT_MARGIN_S


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
    if cfg.pushgateway is not None and not cfg.pushgateway.startswith(("http://", "https://")):
        raise RenderInputError(f"--pushgateway {cfg.pushgateway!r} is not a URL: give http://host:port "
                               "(e.g. http://prometheus-pushgateway.monitoring:9091)")
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


HEAVY_ENV_FAMILIES = {"smax": "JAX + jaxmarl", "grf": "the football engine", "smac": "StarCraft II + SMAC"}
"""Env families the serving image cannot run (the runner Job needs the train image for them)."""


def render_notes(cfg: RenderConfig, model: ModelInfo) -> list[str]:
    """Warnings about a render that is valid but probably not what the user wants."""
    notes = []
    env_id = cfg.runner_env or str(model.manifest["env_id"])
    family = env_id.split(":", 1)[0]
    if family in HEAVY_ENV_FAMILIES and cfg.runner_image is None:
        notes.append(
            f"the runner Job plays {env_id}, which needs {HEAVY_ENV_FAMILIES[family]}: the serving image {cfg.image} "
            "does not carry it; pass --runner-image with the train image (deploy/docker/Dockerfile.train)"
        )
    if not cfg.gpu and any(w in ("cuda", "gpu") for w in _tag_words(parse_image(cfg.image)[1])):
        notes.append(f"image {cfg.image} looks like a CUDA build but --gpu is off: the pods get no GPU and run on CPU")
    return notes
