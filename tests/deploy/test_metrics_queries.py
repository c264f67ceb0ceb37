"""Every panel of the Grafana dashboard and every alert rule queries a metric the flow exports.

Declared names come from the Prometheus registry after importing flows/metrics.py and
Bytewax's Kafka connector (``bytewax_kafka_consumer_lag``); the live endpoint is
checked in test_live_cluster.py.
"""

from __future__ import annotations

import pytest

from deploy.queries import PENDING, alert_rules, dashboard, dashboard_queries, metric_names

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",), "info": ("_info",)}
WANTED_PANELS = {
    "throughput": "fraud_transactions_in_total",
    "decisions": "fraud_verdicts_total",
    "latency": "fraud_end_to_end_latency_seconds_bucket",
    "dead letters": "fraud_dead_letters_total",
    "consumer lag": "bytewax_kafka_consumer_lag",
    "model version": "fraud_model_info",
    "state size": "fraud_state_disk_bytes",
    "batch size": "fraud_scoring_batch_size_bucket",
    "batch time": "fraud_scoring_batch_seconds_bucket",
}


@pytest.fixture(scope="module")
def declared() -> set[str]:
    """Series names the flow's process exports: family name plus the type's suffixes."""
    import bytewax.connectors.kafka  # noqa: F401  (registers bytewax_kafka_consumer_lag)
    from prometheus_client import REGISTRY

    import changelog.recovery  # noqa: F401  (fraud_recovery_backup_*)
    import flows.metrics  # noqa: F401
    import health.watch  # noqa: F401  (fraud_input_healthy)
    import lifecycle.process  # noqa: F401  (fraud_snapshot_interval_seconds)

    return {family.name + suffix for family in REGISTRY.collect()
            for suffix in SUFFIXES.get(family.type, ())}


def test_every_dashboard_query_names_only_exported_metrics(declared: set[str]) -> None:
    for expr in dashboard_queries():
        names = metric_names(expr)
        assert names, f"no metric recognised in {expr!r}"
        assert names <= declared, f"{expr!r} queries {sorted(names - declared)}"


def test_every_alert_names_only_exported_metrics(declared: set[str]) -> None:
    for rule in alert_rules():
        names = metric_names(rule["expr"]) - {"up"}
        assert names or "up" in rule["expr"], rule["alert"]
        missing = names - declared - set(PENDING)
        assert not missing, f"{rule['alert']} queries {sorted(missing)}"


def test_pending_metrics_are_still_pending(declared: set[str]) -> None:
    done = set(PENDING) & declared
    assert not done, f"{sorted(done)} are exported now: delete them from deploy.queries.PENDING"


def test_alerts_cover_stale_snapshots_and_unhealthy_input() -> None:
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    stale = exprs["FraudSnapshotStale"]
    assert "time() - " in stale and "fraud_last_snapshot_timestamp_seconds" in stale
    assert "> 3 * " in stale and "fraud_snapshot_interval_seconds" in stale
    assert exprs["FraudInputUnhealthy"] == "fraud_input_healthy == 0"


def test_dashboard_covers_every_operational_question() -> None:
    panels = {p["title"].lower(): " ".join(t["expr"] for t in p["targets"])
              for p in dashboard()["panels"]}
    for topic, metric in WANTED_PANELS.items():
        assert any(metric in exprs for exprs in panels.values()), f"no panel for {topic}"
    latency = next(e for t, e in panels.items() if "latency" in t)
    assert "histogram_quantile(0.99" in latency and "histogram_quantile(0.5" in latency


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    import yaml

    from deploy.queries import DOCKER

    sources = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources"
                              / "prometheus.yml").read_text())["datasources"]
    uids = {s["uid"] for s in sources}
    data = dashboard()
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for p in data["panels"]:
        assert p["datasource"]["uid"] in uids, p["title"]
        assert all(t["datasource"]["uid"] in uids for t in p["targets"]), p["title"]


def test_alerts_cover_lag_dead_letters_latency_and_silence() -> None:
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    assert any("bytewax_kafka_consumer_lag" in e for e in exprs.values())
    assert any("fraud_dead_letters_total" in e for e in exprs.values())
    assert any("histogram_quantile(0.99" in e and "latency" in e for e in exprs.values())
    assert any("fraud_verdicts_total" in e and "unless" in e for e in exprs.values())
