"""The CUDA paths, checked on a CUDA machine in a few minutes: JSON + Markdown into ``bench/results/gpu/``.

1. ``dlpack``: a SMAX batch's ``obs``/``state``/``avail`` reach PyTorch on the GPU as JAX's own device buffers
   (``torch.from_dlpack``: the tensor's address is the JAX buffer's, no copy, no host-to-device upload; the env
   still makes its host NumPy views for the replay buffer, a device-to-host copy per step).
2. ``train``: ``qmix`` and ``tad-ppo`` on ``smax:3m`` for ``--steps`` env steps, each run its own process after a
   short warm-up run in that process (compiles, cuBLAS start-up): all on the GPU (JAX and PyTorch, ``--device
   cuda``) against all on the CPU (``JAX_PLATFORMS=cpu``, ``--device cpu``) on the same machine, env-steps/s of
   the whole loop; during the CUDA runs every array must come through DLPack (none copied).
3. ``export``: ``marlctl export`` of the CUDA QMIX run (verified against PyTorch as always).
4. ``serve``: ``marlctl serve --device cuda`` of agent 0 - its ``GetSpec`` must name ``CUDAExecutionProvider`` -
   and a short decision-latency bench (one stream, K concurrent episodes) against ``--device cpu``.

A failed check is recorded with its reason and the script exits 1; the other checks still run. Run it through
``bash bench/gpu_check.sh`` (it finds the Python, bounds the time); on a machine without CUDA it stops at once.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ENV_ID = "smax:3m"
ALGOS = ("qmix", "tad-ppo")
MARLCTL = [sys.executable, "-m", "marlctl.cli.app"]  # the CLI of the Python running this (marlctl may be a shim)


def _serving_bench() -> Any:
    spec = importlib.util.spec_from_file_location("serving_bench", HERE / "serving.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def machine() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    # ONNX Runtime's CUDA probe preloads CUDA/cuDNN libraries: in its own process, so JAX and PyTorch here load theirs
    probe = subprocess.run([sys.executable, "-c", "import json; from marlctl.serving.model import cuda_status; "
                            "print(json.dumps(cuda_status()))"], capture_output=True, text=True, timeout=120, check=False)
    ort_cuda = json.loads(probe.stdout) if probe.returncode == 0 else [False, f"probe failed: {probe.stderr[-300:]}"]
    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                           "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
                           "ort_cuda": ort_cuda}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    try:
        import jax

        out["jax"] = jax.__version__
        out["jax_devices"] = [f"{d.platform}:{d.id}" for d in jax.devices()]
    except Exception as exc:  # noqa: BLE001 - recorded, the dlpack check says what it means
        out["jax"] = f"not importable: {exc}"
    return out


def check_dlpack(device: str) -> dict[str, Any]:
    import torch
    from marlctl.envs import make_batched_env
    from marlctl.trainer.step_tensors import TRANSFERS, step_tensor

    step = make_batched_env(ENV_ID, 64).reset(seed=0)
    cuda = torch.device(device)
    before = dict(TRANSFERS)
    rows = {}
    for name, dtype in (("obs", torch.float32), ("state", torch.float32), ("avail", torch.bool)):
        t = step_tensor(step, name, cuda, dtype)
        src = step.device_views[name]
        rows[name] = {"jax_device": str(next(iter(src.devices()))), "tensor_device": str(t.device),
                      "same_buffer": t.data_ptr() == src.unsafe_buffer_pointer(),
                      "equal": bool(np.array_equal(t.cpu().numpy(), getattr(step, name)))}
    copies = TRANSFERS["copy"] - before.get("copy", 0)
    ok = copies == 0 and all(r["same_buffer"] and r["equal"] for r in rows.values())
    reason = "" if ok else ("JAX computes SMAX on the CPU here (install a CUDA JAX, e.g. jax[cuda12]), so its "
                            "arrays are copied to the GPU" if copies else "a tensor does not share JAX's buffer")
    return {"ok": ok, "reason": reason, "arrays": rows, "copies": copies}


def train_rate(algo: str, device: str, steps: int, runs: Path, seed: int = 0) -> dict[str, Any]:
    """One timed training run in this process, after a 2,000-step warm-up run of the same algorithm."""
    from marlctl.trainer.config import load_config
    from marlctl.trainer.run import train_run
    from marlctl.trainer.step_tensors import TRANSFERS
    from rich.console import Console

    def run(n: int, run_dir: Path) -> Any:
        cfg = load_config(algo, ENV_ID, overrides=["run.progress=false", "run.eval_interval=0",
                                                   "run.eval_episodes=8", "run.save_interval=0"],
                          steps=n, seed=seed, device=device)
        return train_run(cfg, run_dir, console=Console(stderr=True, quiet=True))

    run(2_000, runs / f"warmup_{algo}_{device}")
    run_dir = runs / f"{algo}_{device}_{steps}"
    before = dict(TRANSFERS)
    t0 = time.perf_counter()
    summary = run(steps, run_dir)
    wall = time.perf_counter() - t0
    return {"algo": algo, "device": device, "env_steps": summary.env_steps, "updates": summary.updates,
            "wall_s": wall, "env_steps_per_s": summary.env_steps / wall, "run_dir": str(run_dir),
            "dlpack": TRANSFERS["dlpack"] - before.get("dlpack", 0), "copied": TRANSFERS["copy"] - before.get("copy", 0)}


def train_row(algo: str, device: str, steps: int, runs: Path) -> dict[str, Any]:
    """``train_rate`` in a fresh process; the CPU baseline's JAX is kept off the GPU (``JAX_PLATFORMS=cpu``)."""
    env = dict(os.environ, **({"JAX_PLATFORMS": "cpu"} if device == "cpu" else {}))
    p = subprocess.run([sys.executable, __file__, "--train-row", algo, device, str(steps), str(runs)], env=env,
                       capture_output=True, text=True, timeout=400, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{algo} on {device}: {(p.stderr or p.stdout)[-600:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_train(steps: int, runs: Path, jax_on_gpu: bool, device: str) -> dict[str, Any]:
    """Per algorithm a (CPU baseline, device under test) pair of timed runs; rows alternate baseline, device."""
    pairs = {algo: (train_row(algo, "cpu", steps, runs / "baseline"), train_row(algo, device, steps, runs / "device"))
             for algo in ALGOS}
    rows = [r for pair in pairs.values() for r in pair]
    ratios = {algo: dev["env_steps_per_s"] / base["env_steps_per_s"] for algo, (base, dev) in pairs.items()}
    zero_copy = all(dev["copied"] == 0 and dev["dlpack"] > 0 for _, dev in pairs.values())
    ok = zero_copy or not jax_on_gpu  # without a GPU JAX the copy is the only way; the dlpack check says so
    return {"ok": ok, "reason": "" if ok else "observations were copied during CUDA training", "rows": rows,
            "cuda_over_cpu": ratios, "zero_copy_during_cuda_training": zero_copy}


def check_export(run_dir: str, model_dir: Path) -> dict[str, Any]:
    p = subprocess.run([*MARLCTL, "export", run_dir, "--out", str(model_dir)], capture_output=True, text=True,
                       timeout=300, check=False)
    ok = p.returncode == 0 and (model_dir / "manifest.json").is_file()
    return {"ok": ok, "reason": "" if ok else (p.stderr or p.stdout)[-800:], "model_dir": str(model_dir)}


def check_serve(model_dir: Path, seconds: float, device: str) -> dict[str, Any]:
    import grpc
    from marlctl.proto import agent_pb2, agent_pb2_grpc

    sb = _serving_bench()
    sb.SERVER_CPUS = None  # no pinning on a many-core GPU machine
    manifest = json.loads((model_dir / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    obs_TO = rng.standard_normal((sb.EPISODE_LEN, manifest["obs_dim"])).astype(np.float32)
    avail_TA = np.ones((sb.EPISODE_LEN, manifest["n_actions"]), dtype=bool)
    out: dict[str, Any] = {"rows": []}
    for i, dev in enumerate(("cpu", device)):
        port = sb.free_port()
        target = f"127.0.0.1:{port}"
        cmd = [*MARLCTL, "serve", str(model_dir), "--agent", "0", "--port", str(port), "--device", dev]
        try:
            proc = sb.start_process(cmd, target)
        except RuntimeError as exc:
            out["rows"].append({"device": dev, "error": str(exc), "under_test": i == 1})
            continue
        try:
            with grpc.insecure_channel(target) as ch:
                spec = agent_pb2_grpc.AgentServiceStub(ch).GetSpec(agent_pb2.GetSpecRequest(), timeout=10)
            for k in (1, 64):
                cell = sb.bench_service(target, "stream", k, seconds, obs_TO, avail_TA, proc.pid)
                out["rows"].append({"device": dev, "under_test": i == 1, "provider": spec.execution_provider,
                                    "concurrency": k,
                                    "p50_us": cell.p50_us, "p99_us": cell.p99_us,
                                    "decisions_per_s": cell.decisions_per_s})
        finally:
            sb.stop_process(proc)
    want = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    cuda_rows = [r for r in out["rows"] if r["under_test"]]
    out["ok"] = bool(cuda_rows) and all(r.get("provider") == want for r in cuda_rows)
    out["reason"] = "" if out["ok"] else "; ".join(
        r.get("error") or f"the {device} server runs on {r.get('provider')}" for r in cuda_rows) or "no server row"
    return out


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    title = "GPU check" if res["device"] == "cuda" else "GPU check: rehearsal on the CPU (proves the script only)"
    md = [f"# {title} ({res['date']})", "",
          f"Command: `bash bench/gpu_check.sh {' '.join(res['argv'])}`. GPU {m.get('gpu', '-')}, torch {m['torch']} "
          f"(CUDA {m['torch_cuda']}), JAX {m.get('jax')} on {', '.join(m.get('jax_devices', []))}, onnxruntime "
          f"{m['onnxruntime']} ({'CUDA provider usable' if m['ort_cuda'][0] else m['ort_cuda'][1]}).", "",
          "| check | ok | note |", "|---|---|---|"]
    if res.get("stopped"):
        md[-2:-2] = [f"**Stopped early:** {res['stopped']}.", ""]
    for name in ("dlpack", "train", "export", "serve"):
        c = res["checks"].get(name, {"ok": False, "reason": "not run"})
        md.append(f"| {name} | {'yes' if c['ok'] else '**no**'} | {c.get('reason') or ''} |")
    train = res["checks"].get("train", {})
    if train.get("rows"):
        md += ["", f"## Training loop on {ENV_ID} ({train['rows'][0]['env_steps']:,} env steps)", "",
               "| algo | device | env-steps/s | updates | arrays handed over through DLPack | copied |",
               "|---|---|---:|---:|---:|---:|"]
        md += [f"| {r['algo']} | {r['device']} | {r['env_steps_per_s']:,.0f} | {r['updates']} | {r['dlpack']} | "
               f"{r['copied']} |" for r in train["rows"]]
        md += ["", f"{res['device']} / cpu env-steps/s: " + ", ".join(f"{a} {v:.2f}x" for a, v in train["cuda_over_cpu"].items())]
    serve = res["checks"].get("serve", {})
    if serve.get("rows"):
        md += ["", "## Serving agent 0 (one stream per episode)", "",
               "| device | provider | K | p50 us | p99 us | decisions/s |", "|---|---|---:|---:|---:|---:|"]
        md += [f"| {r['device']} | {r.get('provider', '-')} | {r.get('concurrency', '-')} | {r.get('p50_us', 0):.0f} | "
               f"{r.get('p99_us', 0):.0f} | {r.get('decisions_per_s', 0):,.0f} |" if "error" not in r else
               f"| {r['device']} | error: {r['error']} | | | | |" for r in serve["rows"]]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30_000, help="env steps per training run")
    ap.add_argument("--serve-seconds", type=float, default=2.0)
    ap.add_argument("--out", default=str(HERE / "results" / "gpu"), help="directory of gpu_check.{json,md}")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: a rehearsal with the CPU in the GPU's place (proves the script, not the GPU)")
    args = ap.parse_args(argv)
    import torch
    from marlctl.agents.files import atomic_write_text

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: PyTorch sees no CUDA device here - nothing to check (the CUDA paths stay unproven)",
              file=sys.stderr)
        return 2
    res: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "device": args.device,
                           "argv": sys.argv[1:] if argv is None else argv, "machine": machine(), "checks": {}}
    work = Path(tempfile.mkdtemp(prefix="marlctl-gpu-"))

    out = Path(args.out)

    def save() -> None:  # after every check: a run stopped by the time bound keeps what it measured
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "gpu_check.json", json.dumps(res, indent=1, default=str) + "\n")
        atomic_write_text(out / "gpu_check.md", render(res))

    def attempt(name: str, fn: Any, *a: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            got = fn(*a)
        except Exception as exc:  # noqa: BLE001 - one failed check must not hide the others
            got = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"[:500], "traceback": traceback.format_exc()}
        got["wall_s"] = time.perf_counter() - t0
        res["checks"][name] = got
        print(f"gpu_check {name}: {'ok' if got['ok'] else 'FAILED ' + got['reason']} ({got['wall_s']:.0f} s)",
              file=sys.stderr, flush=True)
        save()
        return got

    jax_on_device = args.device == "cpu" or any(not d.startswith("cpu") for d in res["machine"].get("jax_devices", []))
    try:
        attempt("dlpack", check_dlpack, args.device)
        train = attempt("train", check_train, args.steps, work / "runs", jax_on_device, args.device)
        rows = train.get("rows", [])
        if rows and attempt("export", check_export, rows[1]["run_dir"], work / "model")["ok"]:  # qmix, device
            attempt("serve", check_serve, work / "model", args.serve_seconds, args.device)
    except KeyboardInterrupt:  # gpu_check.sh's time bound (SIGINT): keep the finished checks, say what stopped
        res["stopped"] = "the time bound stopped the run; checks not listed did not finish"
        save()
        print(render(res))
        return 1
    print(render(res))
    return 0 if all(c["ok"] for c in res["checks"].values()) and len(res["checks"]) == 4 else 1


def _train_row_main(algo: str, device: str, steps: str, runs: str) -> int:
    print(json.dumps(train_rate(algo, device, int(steps), Path(runs))), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if sys.argv[1:2] == ["--train-row"]:  # one timed run, in its own process (check_train)
        sys.exit(_train_row_main(*sys.argv[2:6]))
    sys.exit(main())
