"""What the deployment files query: dashboard expressions, alert rules, metric names in PromQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = ROOT / "k8s"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "fraud-score.json"
ALERTS = DOCKER / "prometheus" / "alerts.yml"

#: Metrics the rules query that the flow does not export yet, and who adds them. The tests
#: skip these names and fail once one is exported (then delete its line here).
PENDING: dict[str, str] = {}
#: Declared in modules flows.score does not wire yet: not in a live process's /metrics.
PENDING_LIVE: dict[str, str] = {
    **PENDING,
}

_METRIC = re.compile(r"\b(?:fraud|bytewax)_[a-z0-9_]+\b|\bup\b(?=\s*[{=<>!])")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(ALERTS.read_text())["groups"]
    return groups


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in alert_groups() for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (ours, Bytewax's, and ``up``)."""
    return set(_METRIC.findall(expr))
