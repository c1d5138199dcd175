"""Tests of `marlctl deploy render`: schema-valid manifests that kustomize builds, and refusals that write nothing.

Built-in kinds are validated (strict: unknown fields fail) against the Kubernetes OpenAPI
schemas of v1.35.0 shipped in the PyPI package kubernetes-validate; the CRDs (PodMonitor,
PrometheusRule, DestinationRule) are checked structurally, because kubernetes-validate ships only the
built-in API schemas. `kubectl kustomize` (Debian package kubectl) builds every base;
`promtool` (Debian package prometheus) checks the plain Prometheus config and rule file.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from _deploy_support import VENV_BIN, make_model_dir
from marlctl.deploy.errors import DeployError, ModelCheckError, ModelFetchError, RenderInputError
from marlctl.deploy.fetch import fetch_model
from marlctl.deploy.model_check import load_model_dir
from marlctl.deploy.render import RenderConfig, render

K8S_VERSION = "1.35.0"
CRD_KINDS = {"PodMonitor": "monitoring.coreos.com/v1", "PrometheusRule": "monitoring.coreos.com/v1",
             "DestinationRule": "networking.istio.io/v1"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
IMAGE = "ghcr.io/acme/marlctl-serve:0.1.0"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model") / "team")


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not on PATH: scripts/setup.sh installs the Debian package kubectl"
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate(doc: dict[str, Any]) -> None:
    """Schema-validate a built-in kind (strict), or structurally check a known CRD."""
    kind = doc["kind"]
    if kind in CRD_KINDS:
        assert doc["apiVersion"] == CRD_KINDS[kind]
        assert DNS_LABEL.match(doc["metadata"]["name"]) and isinstance(doc["spec"], dict)
        return
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{kind}/{doc['metadata'].get('name')} invalid for Kubernetes {K8S_VERSION}: "
                             f"{str(exc).splitlines()[0]}") from None


def check_names_and_labels(doc: dict[str, Any]) -> None:
    meta = doc["metadata"]
    assert DNS_LABEL.match(meta["name"]) and len(meta["name"]) <= 63, meta["name"]
    for key, value in meta.get("labels", {}).items():
        assert len(value) <= 63 and LABEL_VALUE.match(value), f"label {key}={value!r} is not a valid label value"


def render_and_build(model_dir: Path, out: Path, **kw: Any) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    result = render(model_dir, out, RenderConfig(image=IMAGE, **kw))
    docs = kustomize(out)
    for doc in docs:
        validate(doc)
        check_names_and_labels(doc)
    # Every rendered YAML file parses and validates on its own too (the overlays' inputs).
    for rel in result.files:
        if rel.endswith(".yaml") and not rel.startswith(("prometheus", "kustomization", "monitoring/kust", "mesh/kust")):
            for doc in yaml.safe_load_all((out / rel).read_text()):
                validate(doc)
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}, docs


@pytest.mark.parametrize("source", ["configmap", "pvc", "image", "url"])
def test_render_validates_and_builds(model_dir: Path, tmp_path: Path, source: str) -> None:
    url = "https://models.example.com/team/" if source == "url" else None
    out = tmp_path / "k8s"
    by_key, docs = render_and_build(model_dir, out, model_source=source, model_url=url, replicas=2, namespace="marl-test")
    model = load_model_dir(model_dir)
    team = "qtran-base-matrix-qtran"
    kinds = sorted(d["kind"] for d in docs)
    expect = {"Deployment": 2, "Service": 4, "PodDisruptionBudget": 2, "HorizontalPodAutoscaler": 2, "Job": 1, "Namespace": 1}
    for kind, n in expect.items():
        assert kinds.count(kind) == n, (kind, kinds)
    assert all(d["metadata"].get("namespace", "marl-test") == "marl-test" for d in docs)
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for i in range(2):
        dep = by_key[f"Deployment/{team}-agent-{i}"]
        svc = by_key[f"Service/{team}-agent-{i}"]
        pod = dep["spec"]["template"]
        spec = pod["spec"]
        agent = spec["containers"][0]
        sha = model.agent_entry(i)["sha256"]
        assert pod["metadata"]["labels"]["marl/team"] == team and pod["metadata"]["labels"]["marl/agent"] == str(i)
        assert sha.startswith(pod["metadata"]["labels"]["marl/model-sha256"])
        assert pod["metadata"]["annotations"]["marl/model-sha256"] == sha
        # Selectors line up: Deployment -> its pods, Service -> the pods, PDB/HPA -> the Deployment.
        sel = dep["spec"]["selector"]["matchLabels"]
        assert sel.items() <= pod["metadata"]["labels"].items() and svc["spec"]["selector"] == sel
        assert by_key[f"PodDisruptionBudget/{team}-agent-{i}"]["spec"]["selector"]["matchLabels"] == sel
        hpa = by_key[f"HorizontalPodAutoscaler/{team}-agent-{i}"]["spec"]
        assert hpa["scaleTargetRef"]["name"] == dep["metadata"]["name"] and hpa["minReplicas"] == 2
        assert {m["pods"]["metric"]["name"] for m in hpa["metrics"]} == {"marl_agent_live_episodes", "marl_agent_decision_seconds_p99"}
        ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports.keys()
        headless = by_key[f"Service/{team}-agent-{i}-headless"]["spec"]
        assert headless["clusterIP"] == "None" and headless["selector"] == sel
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert agent[probe]["grpc"]["port"] == ports["grpc"]
        assert agent["args"][:4] == ["serve", agent["args"][1], "--agent", str(i)]
        assert agent["securityContext"]["readOnlyRootFilesystem"] is True and spec["securityContext"]["runAsNonRoot"]
        assert agent["resources"]["requests"] and agent["resources"]["limits"]
        init = spec["initContainers"][0]
        assert init["args"][-2:] == ["--manifest-sha256", model.manifest_sha256] and str(i) in init["args"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        if source == "configmap":
            assert volumes["model"]["configMap"]["name"] in configmaps  # kustomize rewrote the hashed name
        elif source == "pvc":
            assert volumes["model"]["persistentVolumeClaim"]["claimName"] == f"{team}-model"
            assert f"PersistentVolumeClaim/{team}-model" in by_key
        elif source == "url":
            assert "emptyDir" in volumes["model"] and init["name"] == "fetch-model"
            assert init["args"][:4] == ["deploy", "fetch-model", url, "/models"]
        else:
            assert "model" not in volumes and agent["args"][1] == "/opt/marlctl/model"
            assert (out / "model-image" / "Dockerfile").is_file()
    if source == "configmap":
        cm = next(c for n, c in configmaps.items() if n.startswith(f"{team}-model-"))
        for entry in model.manifest["agents"]:
            import base64

            assert hashlib.sha256(base64.b64decode(cm["binaryData"][entry["file"]])).hexdigest() == entry["sha256"]
    job = by_key[f"Job/{team}-runner"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert job[job.index("--agents") + 1] == f"{team}-agent-0:50051,{team}-agent-1:50051"
    assert any(n.endswith("-dashboard") and "marlctl-team.json" in c["data"] for n, c in configmaps.items())
    for sub in ("monitoring", "mesh"):
        for doc in kustomize(out / sub):
            validate(doc)
            assert doc["metadata"]["namespace"] == "marl-test"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_render_cli_gpu(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    proc = subprocess.run(
        [str(VENV_BIN / "marlctl"), "deploy", "render", str(model_dir), "--image", "ghcr.io/acme/marlctl-serve:0.1.0-cuda",
         "--gpu", "--out", str(out), "--team", "t1", "--namespace", "gpu-team"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    docs = kustomize(out)
    for doc in docs:
        validate(doc)
    deps = [d for d in docs if d["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in deps] == ["t1-agent-0", "t1-agent-1"]
    for dep in deps:
        spec = dep["spec"]["template"]["spec"]
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"


def _write_manifest(model_dir: Path, tmp_path: Path, edit: Any) -> Path:
    bad = tmp_path / "bad-model"
    shutil.copytree(model_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    edit(manifest)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    return bad


def _zero_agents(m: dict) -> None:
    m["n_agents"], m["agents"] = 0, []


def _garbage(model_dir: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "garbage-model"
    shutil.copytree(model_dir, bad)
    (bad / "manifest.json").write_text("{not json")
    return bad


def _tampered(model_dir: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "tampered-model"
    shutil.copytree(model_dir, bad)
    data = bytearray((bad / "agent_1.onnx").read_bytes())
    data[-1] ^= 0xFF
    (bad / "agent_1.onnx").write_bytes(bytes(data))
    return bad


BAD_MODELS = {
    "no manifest": (lambda md, tp: tp, ModelCheckError, "no manifest.json"),
    "not json": (_garbage, ModelCheckError, "not valid JSON"),
    "zero agents": (lambda md, tp: _write_manifest(md, tp, _zero_agents), ModelCheckError, "'n_agents' must be >= 1"),
    "foreign manifest": (lambda md, tp: _write_manifest(md, tp, lambda m: m.update(format="other")), ModelCheckError, "format is 'other'"),
    "tampered file": (_tampered, ModelCheckError, "agent 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_refused_nothing_written(model_dir: Path, tmp_path: Path, case: str) -> None:
    make_bad, error, fragment = BAD_MODELS[case]
    src = tmp_path / "src"
    src.mkdir()
    bad = make_bad(model_dir, src)
    out = tmp_path / "out"
    with pytest.raises(error, match=re.escape(fragment)):
        render(bad, out, RenderConfig(image=IMAGE))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


BAD_OPTIONS = {
    "empty image": (dict(image=""), "--image is empty"),
    "blank image": (dict(image="  "), "--image is empty"),
    "uppercase image": (dict(image="Acme/Serve:1"), "not a valid image reference"),
    "gpu with cpu tag": (dict(image="ghcr.io/acme/marlctl-serve:0.1.0-cpu", gpu=True), "tag says cpu"),
    "bad namespace": (dict(image=IMAGE, namespace="Marl_NS"), "--namespace 'Marl_NS' is not a DNS-1123 label"),
    "bad source": (dict(image=IMAGE, model_source="s3"), "configmap, pvc, image, url"),
    "url without url": (dict(image=IMAGE, model_source="url"), "needs --model-url"),
    "ftp url": (dict(image=IMAGE, model_source="url", model_url="ftp://x/y"), "http:// or https://"),
    "zero replicas": (dict(image=IMAGE, replicas=0), "--replicas must be >= 1"),
    "bad quantity": (dict(image=IMAGE, memory_limit="1 GB"), "--memory-limit '1 GB' is not a Kubernetes quantity"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_options_refused_nothing_written(model_dir: Path, tmp_path: Path, case: str) -> None:
    kwargs, fragment = BAD_OPTIONS[case]
    out = tmp_path / "out"
    with pytest.raises(RenderInputError, match=re.escape(fragment)):
        render(model_dir, out, RenderConfig(**kwargs))
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_input_exit_2_and_existing_out_kept(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    marlctl = str(VENV_BIN / "marlctl")
    proc = subprocess.run([marlctl, "deploy", "render", str(model_dir), "--image", IMAGE, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not empty" in proc.stderr and "--force" in proc.stderr
    proc = subprocess.run([marlctl, "deploy", "render", str(model_dir), "--image", "", "--out", str(out), "--force"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--image is empty" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # --force replaces the dir as a whole (no stale files mixed into the new base).
    render(model_dir, out, RenderConfig(image=IMAGE), force=True)
    assert not (out / "keep.txt").exists() and (out / "kustomization.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k8s"]


def test_verify_model_configmap_layout_and_pinning(model_dir: Path, tmp_path: Path) -> None:
    """A ConfigMap volume holds its keys as symlinks into a ..data dir: verification follows them."""
    mount = tmp_path / "models"
    data = mount / "..2026_01_01_00_00_00.000000000"
    data.mkdir(parents=True)
    for f in model_dir.iterdir():
        shutil.copy(f, data / f.name)
    (mount / "..data").symlink_to(data.name)
    for f in model_dir.iterdir():
        (mount / f.name).symlink_to(Path("..data") / f.name)
    pinned = hashlib.sha256((model_dir / "manifest.json").read_bytes()).hexdigest()
    proc = subprocess.run([str(VENV_BIN / "marlctl"), "deploy", "verify-model", str(mount), "--agent", "1",
                           "--manifest-sha256", pinned], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(ModelCheckError, match="pins"):
        load_model_dir(mount, manifest_sha256="0" * 64)
    (data / "agent_0.onnx").write_bytes(b"\0" * (data / "agent_0.onnx").stat().st_size)
    with pytest.raises(ModelCheckError, match="agent 0.*tampered"):
        load_model_dir(mount, agents=[0], manifest_sha256=pinned)
    load_model_dir(mount, agents=[1], manifest_sha256=pinned)  # this pod's own agent is still intact


@pytest.fixture
def http_model(model_dir: Path, tmp_path: Path) -> tuple[str, Path]:
    served = tmp_path / "served"
    shutil.copytree(model_dir, served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", served
    server.shutdown()
    server.server_close()


def test_fetch_model_over_http(http_model: tuple[str, Path], model_dir: Path, tmp_path: Path) -> None:
    url, served = http_model
    pinned = hashlib.sha256((model_dir / "manifest.json").read_bytes()).hexdigest()
    dest = tmp_path / "fetched"
    info = fetch_model(url, dest, pinned, agents=[0])
    assert info.manifest_sha256 == pinned and (dest / "agent_0.onnx").read_bytes() == (model_dir / "agent_0.onnx").read_bytes()
    assert not (dest / "agent_1.onnx").exists()
    with pytest.raises(ModelFetchError, match="pins"):
        fetch_model(url, tmp_path / "wrong-pin", "f" * 64)
    assert not (tmp_path / "wrong-pin" / "manifest.json").exists()
    (served / "agent_1.onnx").write_bytes(b"evil")
    with pytest.raises(ModelFetchError, match="agent 1.*manifest pins"):
        fetch_model(url, tmp_path / "evil", pinned)
    assert not (tmp_path / "evil" / "manifest.json").exists() and not (tmp_path / "evil" / "agent_1.onnx").exists()
    with pytest.raises(ModelFetchError, match="HTTP 404"):
        fetch_model(url + "missing/", tmp_path / "missing", pinned)
    assert issubclass(ModelFetchError, DeployError)


def test_promtool_accepts_rendered_prometheus_files(model_dir: Path, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not on PATH: scripts/setup.sh installs the Debian package prometheus"
    out = tmp_path / "k8s"
    render(model_dir, out, RenderConfig(image=IMAGE))
    # Debian builds Prometheus without Kubernetes service discovery ("field kubernetes_sd_configs not found"):
    # check everything else of the rendered job (relabeling, intervals) with static targets in its place.
    config = yaml.safe_load((out / "prometheus" / "scrape-config.yaml").read_text())
    assert config["scrape_configs"][0].pop("kubernetes_sd_configs") == [{"role": "pod", "namespaces": {"names": ["marl"]}}]
    config["scrape_configs"][0]["static_configs"] = [{"targets": ["127.0.0.1:9091"]}]
    checked = tmp_path / "scrape-config.yaml"
    checked.write_text(yaml.safe_dump(config))
    for what, path in (("config", checked), ("rules", out / "prometheus" / "rules.yaml")):
        proc = subprocess.run([promtool, "check", what, str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "SUCCESS" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    rule = next(d for d in kustomize(out / "monitoring") if d["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load((out / "prometheus" / "rules.yaml").read_text())["groups"]
    # A config that is not valid is refused by promtool (so the checks above can fail).
    broken = tmp_path / "broken.yaml"
    broken.write_text(checked.read_text().replace("action: keep", "action: keeep"))
    assert subprocess.run([promtool, "check", "config", str(broken)], capture_output=True, timeout=60).returncode != 0


def test_every_option_named_in_errors_exists() -> None:
    """Error messages name CLI options (--memory-limit, ...): each must be a real `deploy render` option."""
    import inspect

    import marlctl.deploy.config as config_module

    checks = inspect.getsource(config_module.check_config) + inspect.getsource(config_module.parse_image)
    named = set(re.findall(r"--[a-z][a-z0-9-]+", checks))
    proc = subprocess.run([str(VENV_BIN / "marlctl"), "deploy", "render", "--help"], capture_output=True, text=True,
                          timeout=60, env={"COLUMNS": "200", "PATH": str(VENV_BIN), "TERM": "dumb"})
    assert proc.returncode == 0, proc.stderr
    offered = set(re.findall(r"--[a-z][a-z0-9-]+", proc.stdout))
    assert named <= offered, f"errors name options the CLI lacks: {named - offered}"
    assert len(named) >= 15


def test_notes_for_a_runner_image_without_the_env(model_dir: Path, tmp_path: Path) -> None:
    smax = _write_manifest(model_dir, tmp_path, lambda m: m.update(env_id="smax:3m"))
    result = render(smax, tmp_path / "a", RenderConfig(image=IMAGE))
    assert len(result.notes) == 1 and "--runner-image" in result.notes[0] and "smax:3m" in result.notes[0]
    result = render(smax, tmp_path / "b", RenderConfig(image=IMAGE, runner_image="ghcr.io/acme/marlctl-train:0.1.0"))
    assert result.notes == []
    result = render(model_dir, tmp_path / "c", RenderConfig(image="ghcr.io/acme/marlctl-serve:0.1.0-cuda"))
    assert len(result.notes) == 1 and "--gpu is off" in result.notes[0]
    job = yaml.safe_load((tmp_path / "b" / "runner-job.yaml").read_text())["spec"]["template"]["spec"]["containers"][0]
    assert job["image"] == "ghcr.io/acme/marlctl-train:0.1.0" and job["args"][job["args"].index("--env") + 1] == "smax:3m"
