"""End to end over real sockets and real processes: train -> export -> one `marlctl serve` process per agent ->
`marlctl run` -> records -> replay; SMAX and GRF runs; a real Prometheus scraping two agent services."""
from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from marlctl.serving.records import load_record
from marlctl.serving.replay import replay_record
from marlctl.serving.runner import EpisodeRunner, RunConfig
from serving_procs import MARLCTL, export_random_team, free_port, start_agent, wait_until

PROMETHEUS = "/usr/bin/prometheus"
# QTRAN on Table 1a with the budget of tests/test_qtran_matrix.py (full exploration, 1000 updates) and the
# matrix games' default feed-forward agents (the SMAX/GRF tests below serve recurrent agents).
QTRAN_TRAIN = ("--algo", "qtran-base", "--env", "matrix:qtran", "--steps", "4000", "--seed", "0",
               "--set", "env.num_envs=32", "--set", "learner.updates_per_iteration=8",
               "--set", "mixer.joint_embed_dim=32", "--set", "run.progress=false")


def _marlctl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([*MARLCTL, *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"marlctl {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


def _prom_query(base: str, query: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as resp:
        doc = json.loads(resp.read())
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


@pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="Debian package prometheus not installed")
def test_prometheus_scrapes_agent_decisions(tmp_path):
    env_id = "predator_prey:agents=2,prey=1,grid=5,limit=20"
    model = export_random_team(env_id, tmp_path / "model")
    metrics_ports = [free_port(), free_port()]
    agents = [start_agent(model, i, tmp_path, metrics_port=metrics_ports[i]) for i in range(2)]
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    targets = ", ".join(f"'127.0.0.1:{p}'" for p in metrics_ports)
    config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                      f"  - job_name: marl-agents\n    static_configs:\n      - targets: [{targets}]\n")
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        result = EpisodeRunner(RunConfig(env_id=env_id, agents=tuple(a.address for a in agents), episodes=3,
                                         concurrency=3, seed=1)).run()
        decisions = sum(r.outcome.length for r in result.records)  # each agent decided every step
        assert decisions > 0

        def scraped() -> list[dict] | None:
            if prom.poll() is not None:
                raise AssertionError(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")
            try:
                rows = _prom_query(base, 'sum by (agent) (marl_agent_decisions_total{code="OK"})')
            except OSError:
                return None  # not listening yet
            values = {r["metric"]["agent"]: float(r["value"][1]) for r in rows}
            return rows if values == {"0": decisions, "1": decisions} else None

        wait_until(scraped, 90, f"Prometheus to report {decisions} decisions per agent", period_s=0.5)
        up = _prom_query(base, 'up{job="marl-agents"}')
        assert sorted(float(r["value"][1]) for r in up) == [1.0, 1.0]
        info = _prom_query(base, "marl_agent_model_info")
        assert {r["metric"]["algo"] for r in info} == {"untrained"}
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prom.kill()
        log.close()
        for a in agents:
            a.stop()


def _serve_run_replay(model: Path, env_id: str, n_agents: int, tmp: Path, episodes: int,
                      extra: tuple[str, ...] = ()) -> tuple[dict, list, dict]:
    """Serve each agent as its own `marlctl serve` process, `marlctl run` episodes, `marlctl replay` them all."""
    agents = [start_agent(model, i, tmp) for i in range(n_agents)]
    try:
        recs, summary = tmp / "records", tmp / "summary.json"
        _marlctl("run", "--env", env_id, "--agents", ",".join(a.address for a in agents), "--episodes",
                 str(episodes), "--concurrency", str(min(episodes, 4)), "--seed", "100", "--record", str(recs),
                 "--summary-json", str(summary), *extra)
    finally:
        for a in agents:
            a.stop()
    records = [load_record(p, expect_env=env_id) for p in sorted(recs.iterdir())]
    assert len(records) == episodes
    replay_json = tmp / "replay.json"
    _marlctl("replay", str(recs), "--model", str(model), "--summary-json", str(replay_json))
    replayed = json.loads(replay_json.read_text())["records"]
    assert all(r["match"] and r["agreement"] == 1.0 for r in replayed), replayed
    return json.loads(summary.read_text()), records, replayed


@pytest.mark.slow
def test_qtran_matrix_train_export_serve_run_replay(tmp_path):
    run_dir, model = tmp_path / "run", tmp_path / "model"
    _marlctl("train", *QTRAN_TRAIN, "--out", str(run_dir))
    _marlctl("export", str(run_dir), "--out", str(model))
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["algorithm"] == "qtran-base" and manifest["n_agents"] == 2
    summary, records, _ = _serve_run_replay(model, "matrix:qtran", 2, tmp_path, episodes=8,
                                            extra=("--transport", "multiplex"))
    # Each agent, seeing only its own observation through its own service, picks A: the optimum (A, A) -> 8.
    assert summary["episodes"] == 8 and summary["aborted"] == 0 and summary["fallbacks"] == []
    assert summary["mean_return"] == 8.0 and summary["return_ci"] == [8.0, 8.0]
    for rec in records:
        np.testing.assert_array_equal(rec.actions_TN, [[0, 0]])
        assert rec.outcome.episode_return == 8.0 and rec.outcome.length == 1 and not rec.outcome.degraded
    assert set(summary["latency_ms"]) == {"0", "1"}


def _run_and_replay_in_process(model: Path, env_id: str, n_agents: int, tmp: Path, episodes: int,
                               concurrency: int, transport: str = "stream") -> list:
    """Agents as separate `marlctl serve` processes; the runner and replay in this process (one JIT of the env)."""
    agents = [start_agent(model, i, tmp) for i in range(n_agents)]
    try:
        result = EpisodeRunner(RunConfig(env_id=env_id, agents=tuple(a.address for a in agents), episodes=episodes,
                                         concurrency=concurrency, seed=7, record_dir=tmp / "records",
                                         record_obs=True, timeout_ms=10_000, transport=transport)).run()
    finally:
        for a in agents:
            a.stop()
    assert result.summary.episodes == episodes and result.summary.aborted == 0 and not result.summary.fallbacks
    from marlctl.envs import env_spec, make_env
    from marlctl.serving.evaluate import load_team

    team = load_team(model, env_spec(env_id))
    env = make_env(env_id)  # one env for every replay (reset per record)
    for path in result.record_paths:
        rec = load_record(path, expect_env=env_id)
        replayed, frames = replay_record(rec, str(path), agents=team, render=True, env=env)
        assert replayed.match, (path, replayed.problems)  # observations, rewards and the end all re-simulate
        assert replayed.agreements == replayed.decisions == rec.outcome.length * n_agents  # ORT in process agrees
        assert len(frames) == rec.outcome.length + 1 and frames[0].dtype == np.uint8 and frames[0].ndim == 3
    env.close()
    return [load_record(p) for p in result.record_paths]


def _assert_sane(records: list, limit: int) -> None:
    for rec in records:
        o = rec.outcome
        assert 1 <= o.length <= limit and o.length == len(rec.actions_TN) == len(rec.rewards_T)
        assert o.terminated or (o.truncated and o.length == limit)
        assert o.episode_return == pytest.approx(float(rec.rewards_T.sum()))
        assert not o.degraded and not o.aborted and np.isfinite(rec.latency_ms_TN).all()
        assert (rec.latency_ms_TN > 0).all()
        assert rec.obs_TNO is not None and rec.avail_TNA[np.arange(o.length)[:, None], np.arange(rec.n_agents),
                                                          rec.actions_TN].all()  # only available actions applied


def _train_tiny_and_export(algo: str, env_id: str, tmp: Path, *sets: str) -> Path:
    """`marlctl train` a few hundred steps, then `marlctl export`: the path a user takes, at a tiny budget."""
    run_dir, model = tmp / "run", tmp / "model"
    overrides = [a for kv in ("run.progress=false", "run.eval_episodes=2", *sets) for a in ("--set", kv)]
    _marlctl("train", "--algo", algo, "--env", env_id, "--steps", "300", "--seed", "0", "--out", str(run_dir),
             *overrides)
    _marlctl("export", str(run_dir), "--out", str(model))
    assert json.loads((model / "manifest.json").read_text())["algorithm"] == algo
    return model


@pytest.mark.slow
def test_smax_3m_train_export_serve_run_replay(tmp_path):
    # A tiny QTRAN-alt run (outcome, not win rate, is the point): SMAX through the services, outcome fields
    # sane and identical on replay, and one JIT of the env per process.
    model = _train_tiny_and_export("qtran-alt", "smax:3m", tmp_path, "env.num_envs=8")
    # the multiplexed transport: both episodes share one stream per agent
    records = _run_and_replay_in_process(model, "smax:3m", 3, tmp_path, episodes=2, concurrency=2,
                                         transport="multiplex")
    _assert_sane(records, limit=100)
    for rec in records:
        assert not rec.outcome.won or rec.outcome.terminated  # a win ends the episode
        assert rec.actions_TN.shape[1] == 3 and np.isfinite(rec.outcome.score)


def _family_installed(name: str) -> tuple[bool, str]:
    from marlctl.envs import list_families

    for family, installed, note in list_families():
        if family.name == name:
            return installed, note
    return False, f"no env family {name!r}"


@pytest.mark.slow
@pytest.mark.grf
def test_grf_academy_train_export_serve_run_replay(tmp_path):
    installed, note = _family_installed("grf")
    if not installed:
        pytest.skip(f"Google Research Football not available: {note}")
    env_id = "grf:academy_3_vs_1_with_keeper"
    # TAD-PPO's distilled decentralized actors are what gets exported and served here.
    model = _train_tiny_and_export("tad-ppo", env_id, tmp_path, "env.num_envs=2")
    # Two episodes at once: two football engines in this process, each on its own slot thread.
    records = _run_and_replay_in_process(model, env_id, 3, tmp_path, episodes=2, concurrency=2)
    from marlctl.envs import env_spec

    _assert_sane(records, limit=env_spec(env_id).episode_limit)
    for rec in records:
        assert rec.outcome.won == (rec.outcome.episode_return > 0)  # scoring reward: +1 exactly when we score
