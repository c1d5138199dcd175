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
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marlctl.agents.onnx_io import MANIFEST_NAME
from marlctl.deploy.config import RenderConfig, check_config, render_notes
from marlctl.deploy.errors import RenderInputError
from marlctl.deploy.model_check import ModelInfo, load_model_dir
from marlctl.deploy.monitoring import (
    adapter_rules,
    dashboard_json,
    pod_monitor,
    prometheus_rule,
    rules_yaml,
    scrape_config,
)
from marlctl.deploy.objects import (
    agent_deployment,
    agent_headless_service,
    agent_hpa,
    agent_name,
    agent_pdb,
    agent_service,
    destination_rules,
    model_image_dockerfile,
    model_pvc,
    namespace_object,
    runner_job,
)

__all__ = ["RenderConfig", "RenderResult", "dashboard_json", "render", "render_files", "write_tree"]


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
    notes: list[str]
    """Warnings about a valid render (e.g. a runner image that cannot run the env)."""


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
        files["model-image/Dockerfile"] = model_image_dockerfile(cfg).encode()
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
        "agents": [{"service": agent_name(team, i), "sha256": model.agent_entry(i)["sha256"]} for i in range(model.n_agents)],
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
    return RenderResult(out_dir=out, team=team, files=sorted(files), model=model, notes=render_notes(cfg, model))
