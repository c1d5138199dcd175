"""The episode runner against real `marlctl serve` processes over real sockets: decisions, records, failure
policies (agent killed mid-episode, deadlines), reconnect, spec checks, and the run/replay CLI."""
from __future__ import annotations

import json
import socket
import subprocess
import threading
import urllib.request
from collections import Counter

import numpy as np
import pytest
from marlctl.serving.errors import AgentServiceError, ServingError
from marlctl.serving.evaluate import EvalConfig, evaluate
from marlctl.serving.records import RecordError, load_record
from marlctl.serving.replay import replay_record
from marlctl.serving.runner import EpisodeRunner, RunConfig, outcome_result
from serving_procs import MARLCTL, export_random_team, free_port, start_agent, wait_until

# Two predators, one prey on a 5x5 board: 2 agents, episodes of up to LIMIT steps, cheap NumPy stepping.
LIMIT = 40
ENV = f"predator_prey:agents=2,prey=1,grid=5,limit={LIMIT}"


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """A real exported model dir and its two agent services (separate `marlctl serve` processes)."""
    root = tmp_path_factory.mktemp("runner")
    model = export_random_team(ENV, root / "model")
    agents = [start_agent(model, i, root) for i in range(2)]
    yield model, agents, root
    for a in agents:
        a.stop()


def _sample(registry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.mark.parametrize("transport", ["stream", "multiplex"])
def test_run_matches_in_process_eval_and_replays(team, tmp_path, transport):
    model, agents, _ = team
    config = RunConfig(env_id=ENV, agents=tuple(a.address for a in agents), episodes=4, concurrency=2, seed=11,
                       record_dir=tmp_path / "run", record_obs=True, timeout_ms=5000, transport=transport)
    scraped: list[str] = []

    def scrape(_record) -> None:  # the runner's own /metrics endpoint, read while the run is live
        port = runner.metrics.http.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            scraped.append(resp.read().decode())

    runner = EpisodeRunner(config, metrics_port=0, on_episode=scrape)
    result = runner.run()
    assert len(scraped) == 4
    has_won = EpisodeRunner(config).spec.has_won
    counts = Counter(outcome_result(r.outcome, has_won) for r in result.records)
    for label, count in counts.items():
        assert f'marl_runner_episodes_total{{env="{ENV}",result="{label}"}} {count:.1f}' in scraped[-1], scraped[-1]
    assert "marl_runner_step_seconds_bucket" in scraped[-1] and "marl_runner_episode_return_count" in scraped[-1]
    assert [r.episode_index for r in result.records] == [0, 1, 2, 3]
    assert result.summary.episodes == 4 and result.summary.aborted == 0 and not result.summary.fallbacks
    assert [s["agent_index"] for s in result.agent_specs] == [0, 1]
    assert len(result.record_paths) == 4
    ev = evaluate(EvalConfig(model_dir=model, env_id=ENV, episodes=4, seed=11))
    for served, local in zip(result.records, ev.records, strict=True):
        # Decentralized execution over the network decides exactly what the same ONNX files decide in process.
        np.testing.assert_array_equal(served.actions_TN, local.actions_TN)
        assert served.outcome.episode_return == local.outcome.episode_return
        assert not served.outcome.degraded and np.isfinite(served.latency_ms_TN).all()
    for path in result.record_paths:
        rec = load_record(path, expect_env=ENV)
        replayed, _ = replay_record(rec, str(path))
        assert replayed.match, replayed.problems


@pytest.mark.parametrize("transport", ["stream", "multiplex"])
def test_agent_killed_mid_episode_falls_back_and_reconnects(team, tmp_path, transport):
    model, agents, root = team
    victim = agents[1]
    done = []
    config = RunConfig(env_id=ENV, agents=tuple(a.address for a in agents), episodes=1000, concurrency=2, seed=0,
                       record_dir=tmp_path / "recs", timeout_ms=2000, on_agent_failure="noop",
                       step_interval_ms=5, transport=transport)
    runner = EpisodeRunner(config, on_episode=done.append)
    box: dict[str, object] = {}

    def go() -> None:
        try:
            box["result"] = runner.run()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            box["error"] = exc

    def progress() -> str:  # what the run did so far, for a failing wait's message
        reasons = {r: _sample(runner.metrics.m.registry, "marl_runner_fallbacks_total", agent="1", reason=r)
                   for r in ("unavailable", "stream_error", "timeout", "invalid_decision", "spec_mismatch")}
        return (f"{len(done)} episodes done, {sum(r.outcome.degraded for r in done)} degraded, fallbacks {reasons}, "
                f"runner alive {thread.is_alive()}, error {box.get('error')!r}")

    def agent1_failures() -> float:
        return sum(_sample(runner.metrics.m.registry, "marl_runner_fallbacks_total", agent="1", reason=r)
                   for r in ("unavailable", "stream_error", "timeout"))

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    try:
        registry = wait_until(lambda: runner.metrics and runner.metrics.m.registry, 30, "runner metrics")
        wait_until(lambda: _sample(registry, "marl_runner_step_seconds_count", env=ENV) >= 5, 60, "5 steps")
        victim.kill()  # mid-episode: both in-flight episodes are past their first steps
        wait_until(lambda: agent1_failures() > 0, 60, "a fallback for agent 1")
        # A wrong service comes up at agent 1's address (agent 0's policy): refused on reconnect, still fallbacks.
        impostor = start_agent(model, 0, root, port=victim.port)
        try:
            wait_until(lambda: _sample(registry, "marl_runner_fallbacks_total", agent="1", reason="spec_mismatch") > 0,
                       60, "a spec_mismatch fallback for agent 1", detail=progress)
        finally:
            impostor.kill()
        k = 0
        for _attempt in range(3):
            agents[1] = start_agent(model, 1, root, port=victim.port)  # the agent comes back on the same address
            n0 = len(done)

            def reconnect_or_clean_start(n0: int = n0) -> int:
                """Index after the first record with a reconnect (> 0), or -1 once 3 clean episodes started after the
                agent came back without any episode seeing both the outage and the answer."""
                j = next((j + 1 for j, r in enumerate(done) if r.reconnects), 0)
                return j or (-1 if sum(not r.outcome.degraded for r in done[n0:]) >= 3 else 0)

            k = wait_until(reconnect_or_clean_start, 90, "agent 1 answering again", detail=progress)
            if k > 0:
                break
            # The agent came back exactly between two episodes (a reset + record write is a gap of a few ms in which
            # no decision is asked), so no episode straddled the outage: take it down once more and retry.
            before = agent1_failures()
            agents[1].kill()
            wait_until(lambda before=before: agent1_failures() > before, 60, "a fallback for agent 1 after another kill",
                       detail=progress)
        assert k > 0, f"no episode saw agent 1 reconnect in 3 outages ({progress()})"
        wait_until(lambda: any(not r.outcome.degraded for r in done[k:]), 90, "a clean episode after the reconnect",
                   detail=progress)
    finally:
        runner.stop()
        thread.join(timeout=120)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    result = box["result"]
    records = result.records
    assert _sample(runner.metrics.m.registry, "marl_runner_fallbacks_total", agent="0", reason="unavailable") == 0
    assert result.summary.aborted == 0  # under noop every episode goes on, the other slot's episode included
    degraded = [r for r in records if r.outcome.degraded]
    assert len(degraded) >= 2  # both episodes in flight when agent 1 died
    assert all(f.agent == 1 and f.action >= 0 for r in degraded for f in r.fallbacks)
    assert all(int(r.actions_TN[f.step, f.agent]) == f.action for r in degraded for f in r.fallbacks)
    assert all(r.outcome.length == LIMIT or r.outcome.terminated for r in records)
    reconnected = next(r for r in records if r.reconnects)
    step, agent = reconnected.reconnects[0]
    assert agent == 1 and np.isfinite(reconnected.latency_ms_TN[step, 1])  # answered by the new process
    assert any(f.step < step for f in reconnected.fallbacks)
    # Everything recorded (degraded episodes included) re-simulates to the recorded outcome.
    for rec, path in zip(records, result.record_paths, strict=True):
        if rec.outcome.degraded or rec.episode_index < 2:
            replayed, _ = replay_record(load_record(path), str(path))
            assert replayed.match, (path, replayed.problems)


@pytest.mark.parametrize("transport", ["stream", "multiplex"])
def test_deadline_miss_under_fail_and_random_policies(team, tmp_path, transport):
    _, agents, _ = team
    addresses = tuple(a.address for a in agents)
    # 1 microsecond: no service can answer in time, every decision misses its deadline.
    failed = EpisodeRunner(RunConfig(env_id=ENV, agents=addresses, episodes=2, timeout_ms=0.001,
                                     on_agent_failure="fail", record_dir=tmp_path / "fail", transport=transport)).run()
    assert failed.summary.aborted == 2 and failed.summary.episodes == 0
    rec = failed.records[0]
    assert rec.outcome.aborted and rec.outcome.length == 0
    assert "failed at step 0: timeout" in rec.outcome.error and "aborted" in rec.outcome.error
    assert load_record(failed.record_paths[0]).outcome.aborted
    rnd = EpisodeRunner(RunConfig(env_id=ENV, agents=addresses, episodes=2, timeout_ms=0.001,
                                  on_agent_failure="random", seed=3, transport=transport)).run()
    assert rnd.summary.aborted == 0 and rnd.summary.degraded == 2
    assert rnd.summary.fallbacks[(0, "timeout")] == sum(r.outcome.length for r in rnd.records)
    again = EpisodeRunner(RunConfig(env_id=ENV, agents=addresses, episodes=2, timeout_ms=0.001,
                                    on_agent_failure="random", seed=3, transport=transport)).run()
    for a, b in zip(rnd.records, again.records, strict=True):  # the random fallback is seeded per episode
        np.testing.assert_array_equal(a.actions_TN, b.actions_TN)


def test_spec_mismatch_and_bad_input_are_refused(team):
    _, agents, _ = team
    a0, a1 = agents[0].address, agents[1].address
    with pytest.raises(AgentServiceError, match="serves agent 1, but it is agent 0"):
        EpisodeRunner(RunConfig(env_id=ENV, agents=(a1, a0), episodes=1)).run()
    with pytest.raises(AgentServiceError, match="n_actions=6, the env 'hallway' has 2.*trained on 'predator_prey"):
        EpisodeRunner(RunConfig(env_id="hallway", agents=(a0, a1), episodes=1)).run()
    other = "predator_prey:agents=2,prey=1,grid=6"  # same dims, another board: still refused
    with pytest.raises(AgentServiceError, match=f"trained on '{ENV}', not '{other}'"):
        EpisodeRunner(RunConfig(env_id=other, agents=(a0, a1), episodes=1)).run()
    with pytest.raises(ServingError, match="has 2 agents but --agents lists 1"):
        EpisodeRunner(RunConfig(env_id=ENV, agents=(a0,), episodes=1))
    with pytest.raises(ServingError, match="choose one of fail, noop, random"):
        EpisodeRunner(RunConfig(env_id=ENV, agents=(a0, a1), on_agent_failure="retry"))
    with pytest.raises(ServingError, match="is not host:port"):
        EpisodeRunner(RunConfig(env_id=ENV, agents=(a0, "nowhere"), episodes=1))
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        with pytest.raises(ServingError, match="cannot serve runner metrics on --metrics-port"):
            EpisodeRunner(RunConfig(env_id=ENV, agents=(a0, a1), episodes=1),
                          metrics_port=busy.getsockname()[1]).run()
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(AgentServiceError, match="did not answer GetSpec"):
        EpisodeRunner(RunConfig(env_id=ENV, agents=(a0, dead), episodes=1, connect_timeout_s=0.5)).run()


def test_run_and_replay_cli(team, tmp_path):
    model, agents, _ = team
    recs = tmp_path / "recs"
    addresses = ",".join(a.address for a in agents)
    out = subprocess.run([*MARLCTL, "run", "--env", ENV, "--agents", addresses, "--episodes", "2", "--concurrency",
                          "2", "--record", str(recs), "--seed", "5", "--summary-json", str(tmp_path / "run.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "mean return" in out.stdout and "Wilson" in out.stdout
    # `marlctl eval`: the same episodes with in-process ONNX Runtime reach the same summary.
    out = subprocess.run([*MARLCTL, "eval", str(model), "--env", ENV, "--episodes", "2", "--seed", "5",
                          "--summary-json", str(tmp_path / "eval.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    served, local = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("run", "eval"))
    for key in ("episodes", "mean_return", "return_ci", "win_rate", "mean_length"):
        assert served[key] == local[key], key
    # An aborted episode (deadline missed under --on-agent-failure fail) makes `run` exit 1 and say why.
    out = subprocess.run([*MARLCTL, "run", "--env", ENV, "--agents", addresses, "--episodes", "1", "--timeout-ms",
                          "0.001"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "aborted" in out.stderr and "timeout" in out.stderr, out.stderr
    gif = tmp_path / "ep.gif"
    first = sorted(recs.iterdir())[0]
    out = subprocess.run([*MARLCTL, "replay", str(first), "--model", str(model), "--render", str(gif)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "match" in out.stdout and gif.read_bytes()[:6] == b"GIF89a"
    # A corrupt record and a record from another env are refused with exit code 2 and a clear message.
    bad = tmp_path / "bad.episode.json.gz"
    bad.write_bytes(first.read_bytes()[:50])
    out = subprocess.run([*MARLCTL, "replay", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a valid marlctl episode record" in " ".join(out.stderr.split())
    other_model = export_random_team("hallway", tmp_path / "hallway_model")
    out = subprocess.run([*MARLCTL, "replay", str(first), "--model", str(other_model)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "trained on 'hallway'" in " ".join(out.stderr.split()), out.stderr
    with pytest.raises(RecordError, match="not 'hallway'"):
        load_record(first, expect_env="hallway")


PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"


def test_run_pushes_its_final_metrics_to_a_real_pushgateway(team, tmp_path):
    """`marlctl run --pushgateway`: the runner's /metrics endpoint ends with the run; the Pushgateway keeps the final
    values for Prometheus (the real binary, Debian package prometheus-pushgateway, installed by scripts/setup.sh)."""
    import os

    assert os.access(PUSHGATEWAY, os.X_OK), "scripts/setup.sh installs the Debian package prometheus-pushgateway"
    _, agents, _ = team
    port = free_port()
    gw = subprocess.Popen([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}",
                           f"--persistence.file={tmp_path / 'pushgateway.data'}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return urllib.request.urlopen(url + "/-/ready", timeout=2).status == 200
            except OSError:
                return False

        wait_until(up, 30, "the Pushgateway to be ready")
        # exactly the command of the rendered runner Job (`marlctl deploy render --pushgateway URL`)
        from marlctl.deploy.config import RenderConfig
        from marlctl.deploy.objects import runner_args

        cfg = RenderConfig(image="marlctl:test", runner_episodes=3, runner_concurrency=2, pushgateway=url,
                           runner_metrics_port=free_port())
        args = runner_args(cfg, ENV, [a.address for a in agents])
        assert args[args.index("--pushgateway") + 1] == url
        out = subprocess.run([*MARLCTL, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr + out.stdout
        assert "final metrics pushed" in out.stdout
        text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
        episodes = [line for line in text.splitlines() if line.startswith("marl_runner_episodes_total{")]
        assert episodes and all('job="marlctl_runner"' in line for line in episodes), episodes
        assert sum(float(line.rsplit(" ", 1)[1]) for line in episodes) == 3.0
        steps = next(line for line in text.splitlines() if line.startswith("marl_runner_step_seconds_count{"))
        assert float(steps.rsplit(" ", 1)[1]) > 0
    finally:
        gw.terminate()
        gw.wait(10)
    # nobody listening: the run's results stand, the failed push is reported and the exit code says so
    out = subprocess.run([*MARLCTL, "run", "--env", ENV, "--agents", ",".join(a.address for a in agents),
                          "--episodes", "1", "--pushgateway", url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "pushing the final metrics" in out.stderr and "mean return" in out.stdout
