"""Observability files of a team: PodMonitor, plain scrape config, prometheus-adapter rules, PrometheusRule, dashboard."""
from __future__ import annotations

from importlib import resources
from typing import Any

from marlctl.deploy.config import RenderConfig


def pod_monitor(cfg: RenderConfig, team: str) -> dict[str, Any]:
    """Prometheus Operator PodMonitor for the agents and the runner (labels team/role/namespace/pod)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": team, "labels": {"marl/team": team}},
        "spec": {
            "selector": {"matchLabels": {"marl/team": team}},
            "podMetricsEndpoints": [{
                "port": "metrics",
                "interval": cfg.scrape_interval,
                "relabelings": [
                    {"sourceLabels": ["__meta_kubernetes_pod_label_marl_team"], "targetLabel": "team"},
                    {"sourceLabels": ["__meta_kubernetes_pod_label_marl_role"], "targetLabel": "role"},
                ],
            }],
        },
    }


def scrape_config(cfg: RenderConfig, team: str) -> dict[str, Any]:
    """A plain Prometheus config (no operator): pod discovery in the namespace, kept by team and port name."""
    return {
        "scrape_configs": [{
            "job_name": f"marl-{team}",
            "scrape_interval": cfg.scrape_interval,
            "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [cfg.namespace]}}],
            "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_label_marl_team"], "regex": team, "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "metrics", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Succeeded|Failed", "action": "drop"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_label_marl_team"], "target_label": "team"},
                {"source_labels": ["__meta_kubernetes_pod_label_marl_role"], "target_label": "role"},
            ],
        }]
    }


def adapter_rules() -> list[dict[str, Any]]:
    """prometheus-adapter rules exposing the HPA's two per-pod custom metrics."""
    resources_ = {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
    return [
        {
            "seriesQuery": 'marl_agent_live_episodes{namespace!="",pod!=""}',
            "resources": resources_,
            "name": {"matches": "^marl_agent_live_episodes$", "as": "marl_agent_live_episodes"},
            "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
        },
        {
            "seriesQuery": 'marl_agent_decision_seconds_bucket{namespace!="",pod!=""}',
            "resources": resources_,
            "name": {"matches": "^marl_agent_decision_seconds_bucket$", "as": "marl_agent_decision_seconds_p99"},
            "metricsQuery": "histogram_quantile(0.99, sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>, le))",
        },
    ]


def dashboard_json() -> str:
    """The Grafana dashboard shipped with the package (deploy/grafana/dashboard.json)."""
    return resources.files("marlctl.deploy").joinpath("grafana/dashboard.json").read_text(encoding="utf-8")


def rules_yaml() -> str:
    """The Prometheus recording/alerting rules shipped with the package (deploy/prometheus/rules.yaml)."""
    return resources.files("marlctl.deploy").joinpath("prometheus/rules.yaml").read_text(encoding="utf-8")


def prometheus_rule(team: str) -> dict[str, Any]:
    """The same rule groups as a Prometheus Operator PrometheusRule."""
    import yaml

    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": team, "labels": {"marl/team": team}},
        "spec": {"groups": yaml.safe_load(rules_yaml())["groups"]},
    }
