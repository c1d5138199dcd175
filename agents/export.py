"""ONNX export of a trained team: one self-verifying ONNX file per agent plus a team manifest.

``export_team`` loads an agent bundle (``agents.bundle.load_agent_bundle``: a run dir or a
checkpoint), traces ``GreedyAgentPolicy`` once per agent (agent id baked in, dynamic batch
dim, names/dtypes per ``agents.onnx_io``), stamps metadata props, then verifies every file
before anything lands in the model dir: ``onnx.checker``, then ONNX Runtime against PyTorch
over whole recorded episodes of the real environment (random available actions, recurrent
state carried separately by each runtime). Files are staged as temp files and moved into
place with ``os.replace`` only after verification passed; the manifest is written last. Each
agent's observation range over those verification episodes (``obs_low``/``obs_high`` per feature)
goes into its ONNX metadata and manifest entry: ``marlctl serve --obs-guard`` refuses or clips
observations far outside it.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from marlctl.agents import onnx_io
from marlctl.agents.errors import ModelError
from marlctl.agents.files import atomic_write_bytes
from marlctl.agents.recurrent import AgentNet, GreedyAgentPolicy

MIN_OPSET, MAX_OPSET = 13, 21
"""Opsets the exporter and ONNX Runtime both handle for this graph (checked in tests at both ends)."""


class BundleLike(Protocol):
    """What export needs from ``agents.bundle.AgentBundle``."""

    net: AgentNet
    kind: str
    algo: str
    env_id: str
    env_steps: int
    checkpoint_path: str
    checkpoint_sha256: str


@dataclass(frozen=True)
class ExportConfig:
    """How to export and how hard to verify."""

    opset: int = onnx_io.DEFAULT_OPSET
    """ONNX opset of the exported graphs."""
    verify_episodes: int = 3
    """Episodes of the real environment replayed through both runtimes."""
    verify_max_steps: int | None = None
    """Cap on steps per verification episode (None = the env's whole episode)."""
    tolerance: float = 1e-4
    """Largest allowed |scores_ort - scores_torch| (and hidden state) over all steps."""
    seed: int = 0
    """Seeds the verification episodes and their random actions."""


@dataclass
class AgentVerification:
    """ONNX Runtime vs PyTorch for one agent over the verification episodes."""

    index: int
    steps: int
    """Decisions compared (live steps over all episodes)."""
    max_abs_diff_scores: float
    max_abs_diff_hidden: float
    action_agreement: float
    """Fraction of steps where both runtimes chose the same action."""
    real_disagreements: int
    """Disagreements where the top-two available scores differ by more than the tolerance (must be 0)."""


@dataclass
class ExportResult:
    """What ``export_team`` wrote and how the verification went."""

    out_dir: Path
    manifest: dict[str, Any]
    agents: list[AgentVerification] = field(default_factory=list)
    episodes: int = 0
    source: str = "env"
    """``env`` (recorded from ``make_env(env_id)``) or ``synthetic`` (env backend not installed here)."""
    source_note: str = ""


@dataclass
class RecordedEpisodes:
    """Episodes padded to a common length ``T``; ``E`` episodes, ``N`` agents."""

    obs_ETNO: np.ndarray
    avail_ETNA: np.ndarray
    actions_ETN: np.ndarray
    live_ET: np.ndarray
    source: str
    note: str = ""


def record_episodes(
    env_id: str, n_agents: int, obs_dim: int, n_actions: int, config: ExportConfig
) -> RecordedEpisodes:
    """Play ``config.verify_episodes`` episodes of the real env with uniformly random available actions.

    When the env's backend is not installed on this machine (e.g. GRF on a laptop), falls back
    to synthetic observations and masks of the right shapes and says so in ``note``.
    """
    rng = np.random.default_rng(config.seed)
    from marlctl.envs.errors import BackendUnavailableError

    try:
        from marlctl.envs import make_env

        env = make_env(env_id)
    except (ImportError, BackendUnavailableError) as exc:
        return _synthetic_episodes(n_agents, obs_dim, n_actions, config, rng, note=f"env unavailable: {exc}")
    spec = env.spec
    if (spec.n_agents, spec.obs_dim, spec.n_actions) != (n_agents, obs_dim, n_actions):
        env.close()
        raise ModelError(
            f"the checkpoint's network expects {n_agents} agents x obs {obs_dim} x {n_actions} actions, "
            f"but {env_id} has {spec.n_agents} x {spec.obs_dim} x {spec.n_actions}"
        )
    limit = spec.episode_limit if config.verify_max_steps is None else min(spec.episode_limit, config.verify_max_steps)
    episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    try:
        for e in range(config.verify_episodes):
            ts = env.reset(seed=config.seed + e)
            obs_l, avail_l, act_l = [], [], []
            for _ in range(max(limit, 1)):
                actions_N = _random_available(ts.avail, rng)
                obs_l.append(np.asarray(ts.obs, np.float32))
                avail_l.append(np.asarray(ts.avail, bool))
                act_l.append(actions_N)
                ts = env.step(actions_N)
                if ts.done:
                    break
            episodes.append((np.stack(obs_l), np.stack(avail_l), np.stack(act_l)))
    finally:
        env.close()
    return _pad(episodes, n_agents, obs_dim, n_actions, source="env")


def _random_available(avail_NA: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random available action per agent (vectorized Gumbel-free trick: random keys, masked argmax)."""
    keys_NA = np.where(avail_NA, rng.random(avail_NA.shape), -1.0)
    return keys_NA.argmax(axis=1).astype(np.int64)


def _synthetic_episodes(
    n_agents: int, obs_dim: int, n_actions: int, config: ExportConfig, rng: np.random.Generator, note: str
) -> RecordedEpisodes:
    T = config.verify_max_steps or 50
    episodes = []
    for _ in range(config.verify_episodes):
        obs_TNO = rng.standard_normal((T, n_agents, obs_dim)).astype(np.float32)
        avail_TNA = rng.random((T, n_agents, n_actions)) < 0.7
        avail_TNA[..., 0] |= ~avail_TNA.any(axis=-1)
        actions_TN = np.stack([_random_available(a, rng) for a in avail_TNA])
        episodes.append((obs_TNO, avail_TNA, actions_TN))
    return _pad(episodes, n_agents, obs_dim, n_actions, source="synthetic", note=note)


def _pad(episodes: list, n_agents: int, obs_dim: int, n_actions: int, source: str, note: str = "") -> RecordedEpisodes:
    E, T = len(episodes), max(len(ep[0]) for ep in episodes)
    obs_ETNO = np.zeros((E, T, n_agents, obs_dim), np.float32)
    avail_ETNA = np.ones((E, T, n_agents, n_actions), bool)
    actions_ETN = np.zeros((E, T, n_agents), np.int64)
    live_ET = np.zeros((E, T), bool)
    for e, (obs, avail, act) in enumerate(episodes):
        n = len(obs)
        obs_ETNO[e, :n], avail_ETNA[e, :n], actions_ETN[e, :n], live_ET[e, :n] = obs, avail, act, True
    return RecordedEpisodes(obs_ETNO, avail_ETNA, actions_ETN, live_ET, source, note)


def verify_agent(
    net: AgentNet, index: int, onnx_path: Path, episodes: RecordedEpisodes, tolerance: float
) -> AgentVerification:
    """Run agent ``index`` through ONNX Runtime and PyTorch side by side over ``episodes``.

    All episodes are one batch (rows = episodes), so the dynamic batch dim is exercised; each
    runtime carries its own hidden state from step to step, so drift would accumulate and show.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    policy = GreedyAgentPolicy(net, index).eval()
    E, T = episodes.live_ET.shape
    hidden_t = net.initial_hidden(E)  # [E, H]
    hidden_o = hidden_t.numpy().copy()  # [E, H]
    prev_E = np.full(E, -1, np.int64)
    d_scores = d_hidden = 0.0
    agree = steps = real = 0
    with torch.no_grad():
        for t in range(T):
            live_E = episodes.live_ET[:, t]
            obs_EO = episodes.obs_ETNO[:, t, index]
            avail_EA = episodes.avail_ETNA[:, t, index]
            a_t, q_t, hidden_t = policy(
                torch.from_numpy(obs_EO), torch.from_numpy(prev_E), torch.from_numpy(avail_EA), hidden_t
            )
            a_o, q_o, hidden_o = sess.run(
                None, {"obs": obs_EO, "prev_action": prev_E, "avail_actions": avail_EA, "hidden": hidden_o}
            )
            q_t_np, h_t_np, a_t_np = q_t.numpy(), hidden_t.numpy(), a_t.numpy()
            if live_E.any():
                d_scores = max(d_scores, float(np.abs(q_o - q_t_np)[live_E].max()))
                d_hidden = max(d_hidden, float(np.abs(hidden_o - h_t_np)[live_E].max()))
                same_E = a_o == a_t_np
                agree += int(same_E[live_E].sum())
                steps += int(live_E.sum())
                top2_EA = np.sort(np.where(avail_EA, q_t_np, -np.inf), axis=1)[:, -2:]
                gap_E = top2_EA[:, 1] - top2_EA[:, 0]  # inf when one action is available
                real += int((~same_E & live_E & (gap_E > tolerance)).sum())
            prev_E = episodes.actions_ETN[:, t, index]
    return AgentVerification(index, steps, d_scores, d_hidden, agree / max(steps, 1), real)


def observation_ranges(episodes: RecordedEpisodes) -> list[tuple[list[float], list[float]]]:
    """Per agent, the lowest and highest value of each observation feature over the live steps of the
    recorded episodes (what the verified policy has seen): ``[(low [O], high [O]), ...]``. Serving's
    ``--obs-guard`` refuses or clips observations far outside it."""
    live_ET = episodes.live_ET
    out = []
    for i in range(episodes.obs_ETNO.shape[2]):
        obs_SO = episodes.obs_ETNO[:, :, i][live_ET]  # [live steps, O]
        if obs_SO.shape[0] == 0:
            obs_SO = np.zeros((1, episodes.obs_ETNO.shape[3]), np.float32)
        out.append((obs_SO.min(axis=0).astype(float).tolist(), obs_SO.max(axis=0).astype(float).tolist()))
    return out


def _metadata(bundle: BundleLike, index: int, exported_at: str,
              obs_range: tuple[list[float], list[float]] | None = None) -> dict[str, str]:
    cfg = bundle.net.config
    ranges = {} if obs_range is None else {"obs_low": json.dumps(obs_range[0]), "obs_high": json.dumps(obs_range[1])}
    return {
        **ranges,
        "format": onnx_io.ONNX_FORMAT,
        "format_version": str(onnx_io.ONNX_FORMAT_VERSION),
        "algorithm": bundle.algo,
        "kind": bundle.kind,
        "env_id": bundle.env_id,
        "agent_index": str(index),
        "n_agents": str(cfg.n_agents),
        "obs_dim": str(cfg.obs_dim),
        "n_actions": str(cfg.n_actions),
        "hidden_dim": str(cfg.hidden_dim),
        "env_steps": str(bundle.env_steps),
        "source_checkpoint": str(bundle.checkpoint_path),
        "source_sha256": bundle.checkpoint_sha256,
        "exported_at": exported_at,
        "marlctl_version": onnx_io.marlctl_version(),
    }


def _export_one(net: AgentNet, index: int, path: Path, opset: int, metadata: dict[str, str]) -> None:
    """Trace agent ``index``'s policy into ``path`` (already a temp name) with metadata props."""
    import onnx

    cfg = net.config
    B = 2  # any batch > 1 at trace time; the batch dim is declared dynamic below
    example = (
        torch.zeros(B, cfg.obs_dim),
        torch.full((B,), -1, dtype=torch.int64),
        torch.ones(B, cfg.n_actions, dtype=torch.bool),
        net.initial_hidden(B),
    )
    names = onnx_io.INPUT_NAMES + onnx_io.OUTPUT_NAMES
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript;
        # for this small fixed graph (MLP, GRU cell, one-hot, masked argmax) the TorchScript path is exact.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            GreedyAgentPolicy(net, index).eval(),
            example,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(onnx_io.INPUT_NAMES),
            output_names=list(onnx_io.OUTPUT_NAMES),
            dynamic_axes={name: {0: onnx_io.BATCH_DIM} for name in names},
        )
    model = onnx.load(str(path))
    _restore_pruned_inputs(model, cfg.hidden_dim)
    model.producer_name = "marlctl"
    model.producer_version = metadata["marlctl_version"]
    model.doc_string = f"marlctl agent {index} of {metadata['env_id']} ({metadata['algorithm']})"
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(path, model.SerializeToString())


def _restore_pruned_inputs(model, hidden_dim: int) -> None:
    """Put back contract inputs the tracer pruned because the graph does not read them.

    A feed-forward agent (``recurrent=False``) ignores ``hidden``; the exporter drops unused
    inputs, but the agent model contract has all four inputs for every agent, so a runner or
    service feeds every model the same way."""
    from onnx import TensorProto, helper

    present = {i.name for i in model.graph.input}
    if "hidden" not in present:
        model.graph.input.append(
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [onnx_io.BATCH_DIM, hidden_dim])
        )
    order = {name: k for k, name in enumerate(onnx_io.INPUT_NAMES)}
    inputs = sorted(model.graph.input, key=lambda i: order.get(i.name, len(order)))
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def _load_bundle(bundle_source: str | Path | BundleLike, checkpoint: str | Path | None) -> BundleLike:
    if checkpoint is not None or isinstance(bundle_source, str | Path):
        from marlctl.agents.bundle import load_agent_bundle

        return load_agent_bundle(checkpoint if checkpoint is not None else bundle_source)
    return bundle_source


def export_team(
    bundle_source: str | Path | BundleLike,
    out_dir: str | Path,
    *,
    opset: int | None = None,
    checkpoint: str | Path | None = None,
    config: ExportConfig | None = None,
) -> ExportResult:
    """Export every agent of a run (dir or ``.pt``; ``checkpoint`` overrides) into ``out_dir``.

    ``opset`` overrides ``config.opset``. Raises ``ModelError`` when the source cannot be loaded, when the network does not fit its
    env, or when ONNX Runtime disagrees with PyTorch beyond ``config.tolerance``; on failure
    ``out_dir`` keeps whatever it held before.
    """

    config = config or ExportConfig()
    if opset is not None:
        config = replace(config, opset=opset)
    if not MIN_OPSET <= config.opset <= MAX_OPSET:
        raise ModelError(f"opset {config.opset} not supported: choose {MIN_OPSET}..{MAX_OPSET}")
    bundle = _load_bundle(bundle_source, checkpoint)
    net = bundle.net.eval()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ModelError(f"--out {out} exists and is not a directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _export_into(bundle, net, out, config)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # a failed export leaves no empty model dir behind
        raise


def _export_into(bundle: BundleLike, net: AgentNet, out: Path, config: ExportConfig) -> ExportResult:
    cfg = net.config
    exported_at = datetime.now(UTC).isoformat(timespec="seconds")
    episodes = record_episodes(bundle.env_id, cfg.n_agents, cfg.obs_dim, cfg.n_actions, config)
    obs_ranges = observation_ranges(episodes)

    staged: list[Path] = []
    try:
        entries, checks = [], []
        for i in range(cfg.n_agents):
            tmp = out / f".{onnx_io.agent_file_name(i)}.staged"
            staged.append(tmp)
            _export_one(net, i, tmp, config.opset, _metadata(bundle, i, exported_at, obs_ranges[i]))
            check = verify_agent(net, i, tmp, episodes, config.tolerance)
            worst = max(check.max_abs_diff_scores, check.max_abs_diff_hidden)
            if not np.isfinite(worst) or worst > config.tolerance or check.real_disagreements:
                raise ModelError(
                    f"agent {i}: ONNX Runtime disagrees with PyTorch (max |diff| scores "
                    f"{check.max_abs_diff_scores:.3g}, hidden {check.max_abs_diff_hidden:.3g}, "
                    f"{check.real_disagreements} action disagreements; tolerance {config.tolerance:g})"
                )
            checks.append(check)
            entries.append({
                "index": i,
                "file": onnx_io.agent_file_name(i),
                "sha256": onnx_io.sha256_file(tmp),
                "bytes": tmp.stat().st_size,
                "obs_low": obs_ranges[i][0],
                "obs_high": obs_ranges[i][1],
            })
        for i, tmp in enumerate(staged):
            tmp.replace(out / onnx_io.agent_file_name(i))
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)

    manifest: dict[str, Any] = {
        "format": onnx_io.MANIFEST_FORMAT,
        "version": onnx_io.MANIFEST_VERSION,
        "env_id": bundle.env_id,
        "algorithm": bundle.algo,
        "kind": bundle.kind,
        "n_agents": cfg.n_agents,
        "obs_dim": cfg.obs_dim,
        "n_actions": cfg.n_actions,
        "hidden_dim": cfg.hidden_dim,
        "opset": config.opset,
        "env_steps": int(bundle.env_steps),
        "source_checkpoint": str(bundle.checkpoint_path),
        "source_sha256": bundle.checkpoint_sha256,
        "exported_at": exported_at,
        "marlctl_version": onnx_io.marlctl_version(),
        "agent_net": cfg.to_dict(),
        "agents": entries,
        "verification": {
            "source": episodes.source,
            "note": episodes.note,
            "episodes": int(episodes.live_ET.shape[0]),
            "steps_per_agent": int(episodes.live_ET.sum()),
            "tolerance": config.tolerance,
            "max_abs_diff_scores": max(c.max_abs_diff_scores for c in checks),
            "max_abs_diff_hidden": max(c.max_abs_diff_hidden for c in checks),
            "action_agreement": min(c.action_agreement for c in checks),
        },
    }
    problems = onnx_io.manifest_problems(manifest)
    if problems:  # a bug here, not the user's input: never write a manifest serving would refuse
        raise AssertionError(f"export produced an invalid manifest: {problems}")
    onnx_io.atomic_write_json(out / onnx_io.MANIFEST_NAME, manifest)
    return ExportResult(out, manifest, checks, int(episodes.live_ET.shape[0]), episodes.source, episodes.note)
