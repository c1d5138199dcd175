"""The rendered plain Prometheus scrape config, loaded into the real Prometheus server, scraping a live team.

Two real `marlctl serve` processes and a `marlctl run` runner are started with the container
args of the rendered Deployments and Job (model path, host and ports rewritten to this
machine). The rendered job's `kubernetes_sd_configs` is replaced by `static_configs` whose
targets carry the meta labels Kubernetes pod discovery would set, so the rendered
`relabel_configs` run unchanged: they must keep the team's metrics ports and drop a gRPC
port and another team's pod. (Debian builds Prometheus without Kubernetes discovery, so
static targets are also the only way to run it here.) The rendered rule file is loaded too.
Then PromQL through Prometheus' HTTP API: decision-latency quantiles, runner episode counts,
the recording rules, the prometheus-adapter rules behind the HPAs and every Grafana panel's
query; and `promtool test rules` fires the alerts on synthetic series. Every wait polls with
a deadline.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _deploy_support import (
    LiveTeam,
    free_port,
    http_get,
    make_model_dir,
    poll,
    start_process,
    start_rendered_team,
    stop_process,
)
from marlctl.deploy.render import RenderConfig, render

PROMETHEUS = "/usr/bin/prometheus"
NAMESPACE, TEAM = "marl-test", "t"
SEL = {"namespace": NAMESPACE, "team": TEAM}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("prom")
    model_dir = make_model_dir(work / "model")
    out = work / "k8s"
    render(model_dir, out, RenderConfig(image="ghcr.io/acme/marlctl-serve:0.1.0", namespace=NAMESPACE, team=TEAM))
    return model_dir, out


@pytest.fixture(scope="module")
def team(rendered: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveTeam]:
    model_dir, out = rendered
    live = start_rendered_team(out, model_dir, tmp_path_factory.mktemp("team"))
    yield live
    live.stop()


def _target(port: int, pod: str, role: str, port_name: str = "metrics", team: str = TEAM) -> dict[str, Any]:
    """A static target labelled like Kubernetes pod discovery labels a container port."""
    return {"targets": [f"127.0.0.1:{port}"], "labels": {
        "__meta_kubernetes_namespace": NAMESPACE,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_label_marl_team": team,
        "__meta_kubernetes_pod_label_marl_role": role,
        "__meta_kubernetes_pod_container_port_name": port_name,
        "__meta_kubernetes_pod_phase": "Running",
    }}


@pytest.fixture(scope="module")
def prometheus(rendered: tuple[Path, Path], team: LiveTeam, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert Path(PROMETHEUS).is_file(), "the Debian package prometheus is not installed (scripts/setup.sh installs it)"
    _, out = rendered
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((out / "prometheus" / "scrape-config.yaml").read_text())
    (job,) = config["scrape_configs"]
    assert "kubernetes_sd_configs" in job
    del job["kubernetes_sd_configs"]
    grpc_port = int(team.agent_addrs[0].rsplit(":", 1)[1])
    job["static_configs"] = [
        *[_target(p, f"{TEAM}-agent-{i}-5d9f7-x{i}", "agent") for i, p in enumerate(team.agent_metrics_ports)],
        _target(team.runner_metrics_port, f"{TEAM}-runner-abcde", "runner"),
        _target(grpc_port, f"{TEAM}-agent-0-5d9f7-x0", "agent", port_name="grpc"),  # must be dropped
        _target(team.agent_metrics_ports[0], "other-agent-0-zzz", "agent", team="other"),  # must be dropped
    ]
    job["scrape_interval"] = "1s"  # the only timing change: scrape fast so the test is short
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(out / "prometheus" / "rules.yaml")]
    cfg_path = work / "prometheus.yml"
    cfg_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = work / "prometheus.log"
    proc = start_process([PROMETHEUS, f"--config.file={cfg_path}", f"--storage.tsdb.path={work / 'data'}",
                          f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], log)
    url = f"http://127.0.0.1:{port}"
    try:
        poll("prometheus ready", lambda: "Ready" in http_get(f"{url}/-/ready"), 60, [proc], [log])
        yield url
    finally:
        stop_process(proc)
        shutil.rmtree(work / "data", ignore_errors=True)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    body = json.loads(http_get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout_s=10))
    assert body["status"] == "success", body
    return body["data"]["result"]


def query_until(url: str, promql: str, what: str, team: LiveTeam, n: int = 1, deadline_s: float = 90) -> list[dict]:
    def ready() -> list[dict] | None:
        result = query(url, promql)
        finite = [r for r in result if math.isfinite(float(r["value"][1]))]
        return finite if len(finite) >= n else None

    return poll(what, ready, deadline_s, team.procs, team.logs, interval_s=0.5)


def test_relabeling_keeps_team_metrics_ports_only(prometheus: str, team: LiveTeam) -> None:
    def targets() -> dict | None:
        data = json.loads(http_get(f"{prometheus}/api/v1/targets"))["data"]
        active = data["activeTargets"]
        return data if len(active) == 3 and all(t["health"] == "up" for t in active) else None

    data = poll("3 healthy targets", targets, 60, team.procs, team.logs)
    labels = sorted((t["labels"]["role"], t["labels"]["pod"]) for t in data["activeTargets"])
    assert labels == [("agent", f"{TEAM}-agent-0-5d9f7-x0"), ("agent", f"{TEAM}-agent-1-5d9f7-x1"), ("runner", f"{TEAM}-runner-abcde")]
    assert all(t["labels"]["namespace"] == NAMESPACE and t["labels"]["team"] == TEAM for t in data["activeTargets"])
    assert len(data["droppedTargets"]) == 2


def test_decision_latency_quantiles_and_runner_episodes(prometheus: str, team: LiveTeam) -> None:
    sel = f'namespace="{NAMESPACE}",team="{TEAM}"'
    for q in (0.5, 0.99):
        result = query_until(
            prometheus, f"histogram_quantile({q}, sum by (le, agent) (rate(marl_agent_decision_seconds_bucket{{{sel}}}[30s])))",
            f"p{int(q * 100)} decision latency of both agents", team, n=2)
        assert sorted(r["metric"]["agent"] for r in result) == ["0", "1"]
        assert all(0 < float(r["value"][1]) < 1.0 for r in result)
    episodes = query_until(prometheus, f"sum by (result, env) (marl_runner_episodes_total{{{sel}}})", "runner episodes", team)
    assert all(r["metric"]["env"] == "matrix:qtran" for r in episodes)
    assert sum(float(r["value"][1]) for r in episodes) > 0
    decisions = query_until(prometheus, f'sum by (agent, pod) (marl_agent_decisions_total{{{sel},code="OK"}})', "decisions", team, n=2)
    assert {r["metric"]["pod"] for r in decisions} == {f"{TEAM}-agent-0-5d9f7-x0", f"{TEAM}-agent-1-5d9f7-x1"}


def test_prometheus_adapter_rules_give_per_pod_values(prometheus: str, team: LiveTeam, rendered: tuple[Path, Path]) -> None:
    """The adapter's templated queries, expanded as prometheus-adapter expands them for the HPA's pods."""
    rules = yaml.safe_load((rendered[1] / "prometheus-adapter" / "rules.yaml").read_text())["rules"]
    pods = f"{TEAM}-agent-0-5d9f7-x0|{TEAM}-agent-1-5d9f7-x1"
    for rule in rules:
        series = re.match(r"^(\w+)\{", rule["seriesQuery"]).group(1)
        assert query(prometheus, rule["seriesQuery"]), f"no series for {rule['seriesQuery']}"
        promql = (rule["metricsQuery"].replace("<<.Series>>", series)
                  .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{pods}"').replace("<<.GroupBy>>", "pod"))
        result = query_until(prometheus, promql, f"adapter metric {rule['name']['as']}", team, n=2)
        assert {r["metric"]["pod"] for r in result} == set(pods.split("|"))


def test_every_dashboard_query_runs(prometheus: str, team: LiveTeam, rendered: tuple[Path, Path]) -> None:
    dashboard = json.loads((rendered[1] / "grafana" / "dashboard.json").read_text())
    must_have_data = ("Decision latency", "Decisions / s", "Live episodes", "Episode return", "Episodes / s", "Win rate",
                      "Joint step time", "ONNX Runtime inference", "Pods by model")
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            promql = (target["expr"].replace("$namespace", NAMESPACE).replace("$team", TEAM)
                      .replace("$__rate_interval", "30s"))
            if panel["title"].startswith(must_have_data):
                query_until(prometheus, promql, f"panel {panel['title']!r}", team)
            else:
                query(prometheus, promql)  # valid PromQL; may be empty (no errors, no fallbacks yet)


def test_runner_and_agents_still_alive(team: LiveTeam) -> None:
    for proc in team.procs:
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"


def test_recording_rules_and_alerts_loaded(prometheus: str, team: LiveTeam) -> None:
    p99 = query_until(prometheus, f'marl:agent_decision_seconds:p99_rate1m{{team="{TEAM}"}}', "recorded p99", team, n=2)
    assert sorted(r["metric"]["agent"] for r in p99) == ["0", "1"]
    win = query_until(prometheus, f'marl:runner_win_rate:ratio_15m{{team="{TEAM}"}}', "recorded win rate", team)
    assert 0.0 <= float(win[0]["value"][1]) <= 1.0
    groups = json.loads(http_get(f"{prometheus}/api/v1/rules"))["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    alerts = {n for n, r in rules.items() if r["type"] == "alerting"}
    assert alerts == {"MarlAgentDown", "MarlAgentDecisionLatencyHigh", "MarlAgentErrors", "MarlRunnerFallbacks",
                      "MarlAgentMixedModels"}
    assert all(r["health"] != "err" for r in rules.values()), {n: r.get("lastError") for n, r in rules.items()}
    assert rules["MarlAgentDown"]["state"] == "inactive"  # every target of the healthy team is up


ALERT_TESTS = """
rule_files: [RULES]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{namespace="ns", team="t", role="agent", pod="t-agent-0-a"}'
        values: '1 1 0 0 0 0 0'
      - series: 'marl_runner_fallbacks_total{namespace="ns", team="t", agent="1", reason="unavailable"}'
        values: '0 0 0 4 9 9 9'
    alert_rule_test:
      - eval_time: 6m
        alertname: MarlAgentDown
        exp_alerts:
          - exp_labels: {severity: critical, namespace: ns, team: t, role: agent, pod: t-agent-0-a}
            exp_annotations:
              summary: "Agent pod t-agent-0-a of team t is not scraped"
              description: "Prometheus cannot scrape t-agent-0-a in ns for 2 minutes: the agent's episodes fall back."
      - eval_time: 1m
        alertname: MarlAgentDown
        exp_alerts: []
      - eval_time: 4m
        alertname: MarlRunnerFallbacks
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ns, team: t, agent: "1", reason: unavailable}
            exp_annotations:
              summary: "Runner of team t replaced decisions of agent 1 (unavailable)"
              description: "9 fallback decisions in 5 minutes: those episodes are marked degraded."
"""


def test_alerts_fire_on_synthetic_series(rendered: tuple[Path, Path], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not on PATH: scripts/setup.sh installs the Debian package prometheus"
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text(ALERT_TESTS.replace("RULES", str(rendered[1] / "prometheus" / "rules.yaml")))
    proc = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
