"""The wheel: built from the repo, installed with the `serve` extra into a fresh venv (no system site-packages).

In that venv `marlctl --help` and `marlctl envs list` work, PyTorch and JAX are NOT importable,
and `marlctl serve` serves an exported agent (health SERVING through `marlctl health`, the
images' HEALTHCHECK, and one real decision over gRPC from the venv's own Python). This is
what deploy/docker/Dockerfile.serve installs. Dependencies come from a local wheelhouse
(`$MARLCTL_WHEELHOUSE`, default ~/.cache/marlctl/wheelhouse), filled from the package registry
the first time, so later runs install offline. One venv per test session (module fixture).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _deploy_support import REPO, free_port, grpc_serving, make_model_dir, poll, start_process, stop_process

WHEELHOUSE = Path(os.environ.get("MARLCTL_WHEELHOUSE", Path.home() / ".cache" / "marlctl" / "wheelhouse"))


@dataclass
class ServeVenv:
    """A fresh venv holding only the marlctl wheel and its `serve` dependencies."""

    bin: Path
    wheel: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.bin}:{env.get('PATH', '')}"
        return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=self.bin.parent)


def _sh(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def build_wheel(dest: Path) -> Path:
    """Build the wheel from a copy of the work tree (the build never writes into the repo)."""
    src = dest / "src"
    files = _sh("git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z").stdout.split("\0")
    for rel in filter(None, files):
        path = REPO / rel
        if path.is_file() and not rel.startswith("tests/"):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(path.read_bytes())
    wheels = dest / "dist"
    _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src))
    (wheel,) = wheels.glob("marlctl-*.whl")
    return wheel


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> ServeVenv:
    work = tmp_path_factory.mktemp("pkg")
    wheel = build_wheel(work)
    venv_dir = work / "venv"
    _sh(sys.executable, "-m", "venv", str(venv_dir))  # no --system-site-packages
    pip = [str(venv_dir / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    requirement = f"marlctl[serve] @ {wheel.as_uri()}"
    offline = subprocess.run([*pip, "install", "--no-index", "--find-links", str(WHEELHOUSE), requirement],
                             capture_output=True, text=True, timeout=600)
    if offline.returncode != 0:  # first run (or new dependencies): fill the wheelhouse from the registry
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        _sh(*pip, "download", "--dest", str(WHEELHOUSE), requirement)
        for stale in WHEELHOUSE.glob("marlctl-*.whl"):
            stale.unlink()
        _sh(*pip, "install", "--no-index", "--find-links", str(WHEELHOUSE), requirement)
    return ServeVenv(bin=venv_dir / "bin", wheel=wheel)


def test_wheel_contents(venv: ServeVenv) -> None:
    import zipfile

    names = set(zipfile.ZipFile(venv.wheel).namelist())
    for must in ("marlctl/cli/app.py", "marlctl/serving/server.py", "marlctl/proto/agent_pb2.py",
                 "marlctl/deploy/render.py", "marlctl/deploy/grafana/dashboard.json", "marlctl/agents/onnx_io.py"):
        assert must in names, f"{must} missing from {venv.wheel.name}"
    assert not [n for n in names if n.split("/")[0] in ("cli", "agents", "envs", "serving", "tests")], \
        "generic top-level modules in the wheel"


def test_cli_works_without_torch(venv: ServeVenv) -> None:
    for argv in (["marlctl", "--help"], ["marlctl", "envs", "list"], ["marlctl", "deploy", "render", "--help"]):
        proc = venv.run(*argv)
        assert proc.returncode == 0, f"{argv}: {proc.stdout}\n{proc.stderr}"
    for module in ("torch", "jax"):
        proc = venv.run("python", "-c", f"import {module}")
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, f"{module} importable in the serve venv"
    assert venv.run("python", "-c", "import sys; assert sys.prefix != sys.base_prefix; import onnxruntime").returncode == 0


@pytest.fixture(scope="module")
def served(venv: ServeVenv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], Path, list]]:
    """Both agents of a matrix-game team served by `marlctl serve` processes of the serve venv."""
    work = tmp_path_factory.mktemp("served")
    model_dir = make_model_dir(work / "model")  # exported with the dev venv (torch), served from the serve venv
    env = {"PATH": f"{venv.bin}:{os.environ.get('PATH', '')}"}
    procs, logs, addresses = [], [], []
    try:
        for agent in (0, 1):
            port = free_port()
            logs.append(work / f"serve-{agent}.log")
            procs.append(start_process([str(venv.bin / "marlctl"), "serve", str(model_dir), "--agent", str(agent),
                                        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"], logs[-1], env=env))
            addresses.append(f"127.0.0.1:{port}")
        for address in addresses:
            poll(f"serve-venv agent {address} SERVING", lambda a=address: grpc_serving(a), 90, procs, logs)
        yield addresses, model_dir, procs
    finally:
        for proc in procs:
            stop_process(proc)


DECIDE = """
import sys, grpc
from marlctl.proto import agent_pb2, agent_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as ch:
    stub = agent_pb2_grpc.AgentServiceStub(ch)
    spec = stub.GetSpec(agent_pb2.GetSpecRequest(), timeout=10)
    d = stub.Decide(agent_pb2.DecideRequest(episode_id="pkg-1", start=True, end=True, observation=agent_pb2.Observation(
        obs=[0.5] * spec.obs_dim, avail_actions=[False] + [True] * (spec.n_actions - 1))), timeout=10)
    assert 1 <= d.action < spec.n_actions and len(d.scores) == spec.n_actions, d
    print("action", d.action)
"""


def test_serve_from_the_wheel(venv: ServeVenv, served: tuple[list[str], Path, list]) -> None:
    addresses, model_dir, procs = served
    address = addresses[0]
    health = venv.run("marlctl", "health", address)
    assert health.returncode == 0 and "SERVING" in health.stdout, health.stdout + health.stderr
    decide = venv.run("python", "-c", DECIDE, address)
    assert decide.returncode == 0 and decide.stdout.startswith("action"), decide.stdout + decide.stderr
    # The pods' init container and the renderer work from the wheel too (dashboard packaged, YAML writer present).
    verify = venv.run("marlctl", "deploy", "verify-model", str(model_dir), "--agent", "0")
    assert verify.returncode == 0, verify.stderr
    out = model_dir.parent / "k8s"
    render = venv.run("marlctl", "deploy", "render", str(model_dir), "--image", "marlctl-serve:0.1.0", "--out", str(out))
    assert render.returncode == 0 and (out / "grafana" / "dashboard.json").is_file(), render.stderr
    assert all(p.poll() is None for p in procs)


def test_runner_from_the_wheel(venv: ServeVenv, served: tuple[list[str], Path, list]) -> None:
    """The rendered runner Job's default image (the serve image) plays the papers' games against the team."""
    addresses, model_dir, _ = served
    summary = model_dir.parent / "summary.json"
    proc = venv.run("marlctl", "run", "--env", "matrix:qtran", "--agents", ",".join(addresses), "--episodes", "3",
                    "--summary-json", str(summary))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(summary.read_text())
    assert result["episodes"] == 3 and result["aborted"] == 0 and result["degraded"] == 0 and not result["fallbacks"]
    assert sorted(result["latency_ms"]) == ["0", "1"]


def test_health_fails_on_a_dead_address(venv: ServeVenv) -> None:
    proc = venv.run("marlctl", "health", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert proc.returncode == 1 and "health check failed" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Dockerfiles (no Docker daemon here: checked statically against the repo and the test above)
# ---------------------------------------------------------------------------------------------

DOCKERFILES = {"serve": "serve", "serve-cuda": "serve-gpu", "train": "train,serve", "train-cuda": "train,serve-gpu"}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile(name: str) -> None:
    import tomllib

    path = REPO / "deploy" / "docker" / f"Dockerfile.{name}"
    steps = _instructions(path)
    package_dirs = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    copied = set()
    for inst, args in steps:
        if inst == "COPY" and "--from=" not in args:
            srcs = args.split()[:-1]
            copied.update(srcs)
            for src in srcs:
                assert (REPO / src).exists(), f"{path.name}: COPY {src} does not exist in the repo"
    assert package_dirs <= copied, f"{path.name} does not copy package dirs {package_dirs - copied}: the wheel would not build"
    ignore = (REPO / "deploy" / "docker" / f"Dockerfile.{name}.dockerignore").read_text()
    for src in copied - {"./"}:
        assert f"!{src}" in ignore.split(), f"{path.name}: {src} is excluded from the build context"
    stages = [args for inst, args in steps if inst == "FROM"]
    assert len(stages) == 2 and stages[0].endswith("AS wheel"), "a wheel stage, then the runtime stage"
    final = steps[max(i for i, (inst, _) in enumerate(steps) if inst == "FROM"):]
    assert ("USER", "10001:10001") in final, f"{path.name} must run as the non-root uid 10001"
    assert ("ENTRYPOINT", '["marlctl"]') in final
    installs = [args for inst, args in final if inst == "RUN" and "/dist/marlctl-*.whl)[" in args]
    assert len(installs) == 1 and f"marlctl-*.whl)[{DOCKERFILES[name]}]" in installs[0], installs
    if name.startswith("serve"):
        env = " ".join(args for inst, args in final if inst == "ENV")
        assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env, "read-only root fs: no writes outside /tmp"
        assert '! python -c "import torch"' in installs[0], "the serving image must prove it carries no PyTorch"
        (health,) = [args for inst, args in final if inst == "HEALTHCHECK"]
        assert 'CMD ["marlctl", "health", "127.0.0.1:50051"]' in health
    else:
        assert "torch==2.13.0" in " ".join(args for inst, args in final if inst == "RUN")
