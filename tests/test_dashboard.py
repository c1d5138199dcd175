"""The Grafana dashboard: well-formed JSON, the panels the team needs, and only metrics the services really export.

The metric check runs against live scrapes: two real `marlctl serve` processes and a
`marlctl run` runner started with the rendered container args; one bad request makes an
error code appear and killing agent 1 makes the runner's fallbacks appear, so every
panel's series has samples to be checked against (sample names exactly: a `_sum` the
exporter does not publish fails).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _deploy_support import LiveTeam, http_get, make_model_dir, poll, start_rendered_team
from marlctl.deploy.render import RenderConfig, dashboard_json, render

# Labels a scrape adds (Prometheus target labels from the rendered relabeling) on top of the exporter's.
TARGET_LABELS = {"namespace", "team", "pod", "role", "instance", "job"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}
REQUIRED_PANELS = {
    "decision latency p50/p99": r"histogram_quantile\(0\.5,.*marl_agent_decision_seconds_bucket",
    "decision latency p99": r"histogram_quantile\(0\.99,.*marl_agent_decision_seconds_bucket",
    "decisions/s": r"rate\(marl_agent_decisions_total",
    "errors by code": r"by \(code.*marl_agent_decisions_total\{[^}]*code!=\"OK\"",
    "live episodes": r"marl_agent_live_episodes",
    "fallbacks": r"marl_runner_fallbacks_total",
    "episode return": r"marl_runner_episode_return_bucket",
    "win rate": r"marl_runner_episodes_total\{[^}]*result=\"won\"",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(dashboard_json())


def exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "marlctl-team" and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "team"} <= variables
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    for title, expr in exprs(dashboard):
        used = set(re.findall(r"\$(\w+)", expr))
        assert used <= variables | GRAFANA_BUILTINS, f"{title}: undefined variables {used - variables - GRAFANA_BUILTINS}"
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), title
    joined = "\n".join(e for _, e in exprs(dashboard))
    for what, pattern in REQUIRED_PANELS.items():
        assert re.search(pattern, joined), f"no panel query for {what} (pattern {pattern})"


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveTeam]:
    work = tmp_path_factory.mktemp("dash")
    model_dir = make_model_dir(work / "model")
    out = work / "k8s"
    render(model_dir, out, RenderConfig(image="ghcr.io/acme/marlctl-serve:0.1.0", team="d"))
    live = start_rendered_team(out, model_dir, work)
    yield live
    live.stop()


def scrape_samples(port: int) -> dict[str, set[str]]:
    """Sample name -> label names, from a live /metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(http_get(f"http://127.0.0.1:{port}/metrics")):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def _bad_request(address: str) -> None:
    from marlctl.proto import agent_pb2, agent_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.DecideRequest(episode_id="bad-obs", start=True, observation=agent_pb2.Observation(
            obs=[0.0] * 99, avail_actions=[True] * 3))
        with pytest.raises(grpc.RpcError) as info:
            stub.Decide(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_every_panel_metric_is_exported(dashboard: dict[str, Any], team: LiveTeam) -> None:
    _bad_request(team.agent_addrs[0])

    def agents_ready() -> dict[str, set[str]] | None:
        samples: dict[str, set[str]] = {}
        for port in team.agent_metrics_ports:
            for name, labels in scrape_samples(port).items():
                samples.setdefault(name, set()).update(labels)
        return samples if "marl_agent_decision_seconds_bucket" in samples else None

    exported = poll("agent decision metrics", agents_ready, 60, team.procs, team.logs)
    runner_port = team.runner_metrics_port
    poll("runner episodes", lambda: "marl_runner_episodes_total" in scrape_samples(runner_port), 60, team.procs, team.logs)
    # Kill agent 1: the runner (--on-agent-failure noop in the rendered Job) falls back and counts it.
    agent1 = team.procs[1]
    agent1.kill()
    agent1.wait(timeout=10)
    alive = [p for p in team.procs if p is not agent1]
    runner = poll("runner fallbacks", lambda: (s := scrape_samples(runner_port)).get("marl_runner_fallbacks_total") and s,
                  60, alive, team.logs)
    for name, labels in runner.items():
        exported.setdefault(name, set()).update(labels)
    assert {"agent", "reason"} <= exported["marl_runner_fallbacks_total"]

    for title, expr in exprs(dashboard):
        for name, matchers in re.findall(r"\b(marl_\w+)(\{[^}]*\})?", expr):
            assert name in exported, f"panel {title!r} queries {name}, which no live service exports"
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in exported[name] | TARGET_LABELS, f"panel {title!r}: {name} has no label {label!r}"
        names = set(re.findall(r"\b(marl_\w+)", expr))
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                on_some = any(label in exported[n] for n in names)
                assert on_some or label in TARGET_LABELS, f"panel {title!r} groups by {label!r}, on none of {names}"


def test_rendered_dashboard_is_the_packaged_one(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "model")
    render(model_dir, tmp_path / "k8s", RenderConfig(image="ghcr.io/acme/marlctl-serve:0.1.0"))
    assert json.loads((tmp_path / "k8s" / "grafana" / "dashboard.json").read_text()) == json.loads(dashboard_json())
