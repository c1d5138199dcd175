"""One agent's exported model, loaded for serving: manifest and hash checks, ONNX Runtime session, warm-up.

Torch-free (the serving image has no PyTorch). ``load_agent_model(model_dir, index)`` refuses,
with a ``ModelDirError`` naming the problem, what ``serving.modeldir.verify_model_dir`` refuses (a
manifest missing or malformed, an agent file missing, truncated or not matching its sha256), and
a graph whose inputs/outputs/dims/metadata differ from the manifest. The session is built from the same bytes
that were hashed, so the file cannot change between check and load.

Threads: ``intra_op_num_threads = 1`` by default. Agent networks are small (an MLP and a GRU
cell, ~10^4 parameters): one decision costs tens of microseconds, which intra-op parallelism
cannot shorten (thread wake-ups cost more than the work), and a service usually shares its node
with other agents' services. Throughput comes from micro-batching concurrent episodes into one
call instead (``serving.server``).
"""
from __future__ import annotations

import ctypes
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from marlctl.agents import onnx_io
from marlctl.serving.errors import ModelDirError
from marlctl.serving.modeldir import check_agent_index, read_agent_file, verify_model_dir

log = logging.getLogger(__name__)

_ORT_TYPES = {"obs": "tensor(float)", "prev_action": "tensor(int64)", "avail_actions": "tensor(bool)",
              "hidden": "tensor(float)", "action": "tensor(int64)", "scores": "tensor(float)",
              "hidden_out": "tensor(float)"}


@dataclass(frozen=True)
class ModelConfig:
    """How a served agent model runs."""

    device: str = "auto"
    """``auto`` (CUDA when it really loads, else CPU), ``cpu``, or ``cuda`` (error when CUDA cannot load)."""
    intra_op_threads: int = 1
    """ONNX Runtime intra-op threads (1: lowest per-decision latency for small agent networks)."""
    warmup_batch_sizes: tuple[int, ...] = (1, 8, 64)
    """Batch sizes run (and timed) at load, so the first real decisions do not pay for allocation."""


@dataclass
class AgentModel:
    """A verified, warmed ONNX Runtime session for one agent plus what the manifest says about it."""

    model_dir: Path
    index: int
    manifest: dict[str, Any]
    sha256: str
    session: Any  # onnxruntime.InferenceSession
    provider: str
    """Execution provider actually in use."""
    provider_note: str = ""
    """Why CUDA was or was not used."""
    infer_seconds: dict[int, float] = field(default_factory=dict)
    """Median wall time of one inference call per warm-up batch size (measured at load)."""
    manifest_sha256: str = ""
    """sha256 of the manifest file's bytes (it pins every agent file: the team's model version)."""
    obs_low_O: np.ndarray | None = None
    """Lowest value of each observation feature seen at export (None: exported before ranges were recorded)."""
    obs_high_O: np.ndarray | None = None

    @property
    def version(self) -> str:
        """The model version: the first 12 hex digits of the manifest's sha256."""
        return self.manifest_sha256[:12]

    @property
    def obs_dim(self) -> int:
        return int(self.manifest["obs_dim"])

    @property
    def n_actions(self) -> int:
        return int(self.manifest["n_actions"])

    @property
    def hidden_dim(self) -> int:
        return int(self.manifest["hidden_dim"])

    def initial_hidden(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.hidden_dim), np.float32)  # [B, H]

    def infer(
        self, obs_BO: np.ndarray, prev_action_B: np.ndarray, avail_BA: np.ndarray, hidden_BH: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(action [B] int64, scores [B, A] float32, hidden_out [B, H] float32)``; inputs must be validated."""
        action_B, scores_BA, hidden_out_BH = self.session.run(
            None, {"obs": obs_BO, "prev_action": prev_action_B, "avail_actions": avail_BA, "hidden": hidden_BH}
        )
        return action_B, scores_BA, hidden_out_BH


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """Read and schema-check ``MODEL_DIR/manifest.json`` (``ModelDirError``; ``serving.modeldir``)."""
    return verify_model_dir(model_dir, agents=[]).manifest


def cuda_status() -> tuple[bool, str]:
    """Whether ONNX Runtime's CUDA provider can really run here, and why (checked without logging errors).

    ``get_available_providers()`` only says the build has CUDA; the provider still fails at
    session creation (with error logs) when there is no driver, no GPU or no cuDNN/cuBLAS.
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider"
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no NVIDIA driver (libcuda.so.1 not loadable)"
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return False, "no CUDA device visible"
    capi = Path(ort.__file__).parent / "capi"
    if hasattr(ort, "preload_dlls"):
        try:  # CUDA/cuDNN from the nvidia-* wheels when installed; harmless otherwise
            ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
        except Exception as exc:  # noqa: BLE001 - best effort, the real check follows
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / "libonnxruntime_providers_cuda.so"))
    except OSError as exc:
        return False, f"CUDA provider libraries do not load ({exc})"
    return True, f"{count.value} CUDA device(s)"


def _check_graph(session: Any, manifest: dict[str, Any], where: str) -> None:
    dims = {"obs": [manifest["obs_dim"]], "prev_action": [], "avail_actions": [manifest["n_actions"]],
            "hidden": [manifest["hidden_dim"]], "action": [], "scores": [manifest["n_actions"]],
            "hidden_out": [manifest["hidden_dim"]]}
    for kind, args, names in (("input", session.get_inputs(), onnx_io.INPUT_NAMES),
                              ("output", session.get_outputs(), onnx_io.OUTPUT_NAMES)):
        got = [a.name for a in args]
        if got != list(names):
            raise ModelDirError(f"{where}: {kind}s are {got}, expected {list(names)} (not a marlctl agent model)")
        for a in args:
            want = [a.shape[0], *dims[a.name]]
            if a.type != _ORT_TYPES[a.name] or list(a.shape) != want:
                raise ModelDirError(
                    f"{where}: {kind} {a.name} is {a.type} {a.shape}, expected {_ORT_TYPES[a.name]} "
                    f"[batch, {', '.join(map(str, dims[a.name]))}] per the manifest"
                )


def load_agent_model(model_dir: str | Path, agent_index: int, config: ModelConfig | None = None) -> AgentModel:
    """Load, verify and warm agent ``agent_index`` of ``model_dir``."""
    import onnxruntime as ort

    config = config or ModelConfig()
    model_dir = Path(model_dir)
    info = verify_model_dir(model_dir, agents=[])
    manifest = info.manifest
    check_agent_index(info, agent_index, model_dir)
    path = model_dir / manifest["agents"][agent_index]["file"]
    data, digest = read_agent_file(model_dir, manifest, agent_index)

    if config.device not in ("auto", "cpu", "cuda"):
        raise ModelDirError(f"device {config.device!r} not valid: choose auto, cpu or cuda")
    use_cuda, note = (False, "CPU requested") if config.device == "cpu" else cuda_status()
    if config.device == "cuda" and not use_cuda:
        raise ModelDirError(f"--device cuda requested but CUDA is not usable: {note}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: a CPU-only node must not log CUDA noise on every start
    opts.intra_op_num_threads = config.intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(data, opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types for corrupt graphs
        raise ModelDirError(f"{path} is not a loadable ONNX model: {exc}") from None
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("agent_index") != str(agent_index) or meta.get("env_id") != manifest["env_id"]:
        raise ModelDirError(
            f"{path} metadata says agent {meta.get('agent_index')!r} of {meta.get('env_id')!r}, "
            f"the manifest lists it as agent {agent_index} of {manifest['env_id']!r}"
        )
    _check_graph(session, manifest, str(path))
    obs_low, obs_high = _obs_range(meta, manifest["obs_dim"], str(path))
    provider = session.get_providers()[0]
    model = AgentModel(model_dir, agent_index, manifest, digest, session, provider, note,
                       manifest_sha256=info.manifest_sha256, obs_low_O=obs_low, obs_high_O=obs_high)
    model.infer_seconds = _warm_up(model, config.warmup_batch_sizes)
    log.info("agent %d of %s loaded on %s (%s); inference %s", agent_index, model_dir, provider, note,
             ", ".join(f"batch {b}: {s * 1e6:.0f} us" for b, s in model.infer_seconds.items()))
    return model


def _obs_range(meta: dict[str, str], obs_dim: int, where: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The exported observation range from the ONNX metadata (``obs_low``/``obs_high``: JSON lists), or Nones."""
    if "obs_low" not in meta and "obs_high" not in meta:
        return None, None
    try:
        low = np.array(json.loads(meta["obs_low"]), np.float32)
        high = np.array(json.loads(meta["obs_high"]), np.float32)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelDirError(f"{where}: metadata obs_low/obs_high unreadable ({exc})") from None
    if low.shape != (obs_dim,) or high.shape != (obs_dim,) or not (np.isfinite(low).all() and np.isfinite(high).all()) \
            or (low > high).any():
        raise ModelDirError(f"{where}: metadata obs_low/obs_high must be {obs_dim} finite values each with low <= high")
    return low, high


def _warm_up(model: AgentModel, batch_sizes: tuple[int, ...]) -> dict[int, float]:
    """Run every batch size (checking output shapes), then time each; returns median seconds per call."""
    rng = np.random.default_rng(0)
    times: dict[int, float] = {}
    for B in sorted({1, *batch_sizes}):
        obs_BO = rng.standard_normal((B, model.obs_dim)).astype(np.float32)
        avail_BA = np.ones((B, model.n_actions), bool)
        prev_B, hidden_BH = np.full(B, -1, np.int64), model.initial_hidden(B)
        action_B, scores_BA, _ = model.infer(obs_BO, prev_B, avail_BA, hidden_BH)
        if action_B.shape != (B,) or scores_BA.shape != (B, model.n_actions) or not np.isfinite(scores_BA).all():
            raise ModelDirError(f"agent {model.index}: warm-up at batch {B} gave malformed outputs")
        samples = []
        for _ in range(11):
            t0 = time.perf_counter()
            model.infer(obs_BO, prev_B, avail_BA, hidden_BH)
            samples.append(time.perf_counter() - t0)
        times[B] = float(np.median(samples))
    return times
