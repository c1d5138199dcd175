"""`marlctl deploy render-train`: a KubeRay RayJob that kustomize builds, checked against the CRD's schema for the
fields it uses, pod templates and the run volume strict against Kubernetes 1.35, and refusals that write nothing.

``RAYJOB_SCHEMA`` restates, for the fields the renderer uses, the types, enums and required keys of KubeRay's
``ray.io/v1`` RayJob CRD (``ray-operator/config/crd/bases/ray.io_rayjobs.yaml``, release v1.7): the CRD's own
pod templates are core ``PodTemplateSpec``s, validated here with the Kubernetes schema instead.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from marlctl.deploy.errors import RenderInputError
from marlctl.deploy.rayjob import TrainRenderConfig, render_train, train_dashboard_json
from marlctl.trainer.distributed.settings import RAY_VERSION

REPO = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.35.0"
IMAGE = "ghcr.io/acme/marlctl-train:0.1.0"
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_TEMPLATE = {"type": "object"}  # a core PodTemplateSpec: validated with the Kubernetes schema below
_GROUP_COMMON = {"rayStartParams": _STR_MAP, "template": _TEMPLATE}
RAYJOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "entrypoint": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "backoffLimit": _INT32,
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": _INT32,
                "rayClusterSpec": {
                    "type": "object",
                    "required": ["headGroupSpec"],
                    "additionalProperties": False,
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "headGroupSpec": {"type": "object", "required": ["template"], "additionalProperties": False,
                                          "properties": _GROUP_COMMON},
                        "workerGroupSpecs": {"type": "array", "items": {
                            "type": "object", "required": ["groupName", "maxReplicas", "minReplicas", "template"],
                            "additionalProperties": False,
                            "properties": {**_GROUP_COMMON, "groupName": {"type": "string"}, "replicas": _INT32,
                                           "minReplicas": _INT32, "maxReplicas": _INT32}}},
                    },
                },
            },
        },
    },
}


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not on PATH: scripts/setup.sh installs the Debian package kubectl"
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def strict(doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{doc['kind']} invalid for Kubernetes {K8S_VERSION}: {str(exc).splitlines()[0]}") from None


def check_rayjob(job: dict[str, Any]) -> None:
    jsonschema.validate(job, RAYJOB_SCHEMA)
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:  # the pod templates, strict, as a core PodTemplate would hold them
        strict({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": group["template"]})


def render(tmp: Path, **kw: Any) -> tuple[dict[str, dict[str, Any]], Path]:
    out = tmp / "k8s"
    args = {"algo": "mappo", "env_id": "grf:academy_3_vs_1_with_keeper", "steps": 2_000_000, "image": IMAGE,
            "workers": 8, "namespace": "marl-train", **kw}
    render_train(TrainRenderConfig(**args), out)
    docs = kustomize(out)
    return {d["kind"]: d for d in docs}, out


def test_rayjob_fits_the_crd_and_kustomize_builds_it(tmp_path: Path) -> None:
    by_kind, out = render(tmp_path, overrides=("env.num_envs=4",), worker_cpus=2, gpu=True)
    assert sorted(by_kind) == ["ConfigMap", "PersistentVolumeClaim", "RayJob"]
    job = by_kind["RayJob"]
    check_rayjob(job)
    strict(by_kind["PersistentVolumeClaim"])
    strict(by_kind["ConfigMap"])
    assert all(d["metadata"]["namespace"] == "marl-train" for d in by_kind.values())
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == RAY_VERSION
    head, (workers,) = cluster["headGroupSpec"], cluster["workerGroupSpecs"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no rollout worker beside the learner
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 8
    assert workers["rayStartParams"]["num-cpus"] == "2"
    worker_res = workers["template"]["spec"]["containers"][0]["resources"]
    assert worker_res["requests"]["cpu"] == worker_res["limits"]["cpu"] == "2"
    head_pod = head["template"]["spec"]
    assert head_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    mount = head_pod["containers"][0]["volumeMounts"][0]
    claim = head_pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert mount["mountPath"] == "/runs" and claim == by_kind["PersistentVolumeClaim"]["metadata"]["name"]
    assert {"name": "metrics", "containerPort": 9100} in head_pod["containers"][0]["ports"]
    # The entrypoint: resume the run when the volume holds its checkpoint, else start it with the Ray flags.
    script = shlex.split(job["spec"]["entrypoint"])
    assert script[:2] == ["sh", "-c"]
    start = shlex.split(script[2].split("else exec ", 1)[1].rsplit(";", 1)[0])
    resume = shlex.split(script[2].split("then exec ", 1)[1].split(";", 1)[0])
    run_dir = "/runs/mappo-grf-academy-3-vs-1-with-keeper"
    assert start[:2] == ["marlctl", "train"] and start[start.index("--out") + 1] == run_dir
    for flag, value in (("--ray", "auto"), ("--rollout-workers", "8"), ("--worker-cpus", "2"), ("--device", "cuda"),
                        ("--set", "env.num_envs=4"), ("--steps", "2000000")):
        assert start[start.index(flag) + 1] == value, flag
    assert resume[:4] == ["marlctl", "train", "--resume", run_dir] and "--rollout-workers" in resume
    assert f"[ -f {run_dir}/checkpoints/latest.pt ]" in script[2]
    # The resolved config the job will train with, and the monitoring overlay.
    resolved = json.loads((out / "train-config.json").read_text())
    assert resolved["ray"]["address"] == "auto" and resolved["ray"]["rollout_workers"] == 8
    assert resolved["env"]["num_envs"] == 4 and resolved["run"]["device"] == "cuda"
    (monitor,) = kustomize(out / "monitoring")
    assert monitor["kind"] == "PodMonitor" and monitor["spec"]["selector"]["matchLabels"]["marl/role"] == "learner"
    assert head["template"]["metadata"]["labels"]["marl/role"] == "learner"


def test_the_start_command_is_a_valid_marlctl_train_invocation(tmp_path: Path) -> None:
    """The rendered start command, run here with `--ray auto` swapped for a missing head, fails on the cluster
    only: its flags and --set keys are all accepted by the real CLI."""
    by_kind, _ = render(tmp_path, algo="vdn", env_id="matrix:qtran", steps=100, overrides=("replay.batch_size=8",))
    script = shlex.split(by_kind["RayJob"]["spec"]["entrypoint"])[2]
    start = shlex.split(script.split("else exec ", 1)[1].rsplit(";", 1)[0])
    start[start.index("--ray") + 1] = "127.0.0.1:9"  # discard port: nothing listens
    start[start.index("--out") + 1] = str(tmp_path / "run")
    start += ["--set", "ray.connect_timeout_s=1"]
    p = subprocess.run([sys.executable, "-m", "marlctl.cli.app", *start[1:]], capture_output=True, text=True,
                       timeout=120, env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2 and "cannot reach a Ray head at 127.0.0.1:9" in p.stderr, p.stdout + p.stderr


@pytest.mark.parametrize(("kw", "message"), [
    ({"overrides": ("optim.nope=1",)}, "unknown key(s) optim.nope"),
    ({"algo": "dqn"}, "unknown algorithm 'dqn'"),
    ({"env_id": "matrix:nope"}, "unknown matrix scenario 'nope'"),
    ({"workers": 0}, "--workers 0"),
    ({"image": "Not An Image"}, "is not a valid image reference"),
    ({"worker_memory": "lots"}, "--worker-memory 'lots' is not a Kubernetes quantity"),
    ({"name": "Train_Run"}, "--name 'Train_Run' is not a DNS-1123 label"),
    ({"metrics_port": 6379}, "--metrics-port 6379"),
])
def test_bad_input_is_refused_and_writes_nothing(tmp_path: Path, kw: dict[str, Any], message: str) -> None:
    args = {"algo": "vdn", "env_id": "matrix:qtran", "steps": 100, "image": IMAGE, "workers": 2, **kw}
    with pytest.raises(RenderInputError, match=re.escape(message)):
        render_train(TrainRenderConfig(**args), tmp_path / "k8s")
    assert not (tmp_path / "k8s").exists()


def test_cli_render_train_exit_codes(tmp_path: Path) -> None:
    from marlctl.cli.app import app
    from typer.testing import CliRunner

    base = ["deploy", "render-train", "--algo", "qtran-base", "--env", "matrix:qtran", "--steps", "1000",
            "--image", IMAGE, "--workers", "2"]
    ok = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a")], env={"COLUMNS": "300"})
    assert ok.exit_code == 0, ok.output
    assert "RayJob qtran-base-matrix-qtran" in ok.output and (tmp_path / "a" / "rayjob.yaml").is_file()
    bad = CliRunner().invoke(app, [*base, "--set", "replay.batch_size=oops", "--out", str(tmp_path / "b")],
                             env={"COLUMNS": "300"})
    assert bad.exit_code == 2 and "replay.batch_size='oops' is not an integer" in bad.output
    assert not (tmp_path / "b").exists()


def test_ray_is_pinned_once_and_the_serving_install_stays_without_it() -> None:
    import ray

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert f"ray=={RAY_VERSION}" in extras["train"] and ray.__version__ == RAY_VERSION
    assert not any(d.startswith("ray") for d in project["dependencies"] + extras["serve"] + extras["serve-gpu"])


# ------------------------------------------------------------------ the training dashboard


def _exported_samples() -> set[str]:
    """Sample names the training exporter really publishes (from a registry fed by a real local run's figures)."""
    from marlctl.trainer.train_metrics import TrainMetrics
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    m = TrainMetrics()
    m.env_steps.labels(worker="0").inc(1)
    m.dropped.labels(reason="policy_lag").inc(1)
    text = generate_latest(m.registry).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_train_dashboard_queries_only_exported_metrics_and_has_the_panels() -> None:
    dash = json.loads(train_dashboard_json())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    used = {name for e in exprs for name in re.findall(r"\b(marl_[a-z_]+)\b", e)}
    exported = _exported_samples()
    assert used and used <= exported, sorted(used - exported)
    joined = "\n".join(exprs)
    for needed in (r"sum by \(worker\) \(rate\(marl_train_env_steps_total", r"sum by \(reason\).*episodes_dropped",
                   r"marl_train_worker_restarts_total", r"marl_train_policy_lag", r"marl_train_workers_alive",
                   r"marl_train_eval_return", r"marl_train_eval_win_rate", r"rate\(marl_train_updates_total"):
        assert re.search(needed, joined), needed
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    assert (REPO / "deploy" / "grafana" / "dashboard.json").is_file()  # next to the serving dashboard
