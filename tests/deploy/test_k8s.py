"""The Kubernetes manifests: rendered by kustomize, validated offline against the API schemas.

Core kinds are checked with kubernetes-validate (bundled JSON schemas, strict: unknown
fields fail). ServiceMonitor and PrometheusRule are CRDs outside those schemas: their
structure is checked here, and the PrometheusRule's groups must equal
docker/prometheus/alerts.yml (which promtool checks in test_docker.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.kustomize import approximate, kubectl, render
from deploy.queries import K8S, alert_groups
from flows.settings import VARIABLES

K8S_VERSION = "1.30.0"
CRDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
OVERLAYS = [K8S / "base", K8S / "overlays" / "dev", K8S / "overlays" / "autoscale"]
AUTOSCALE = K8S / "overlays" / "autoscale"


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest) -> tuple[Path, list[dict[str, Any]]]:
    objs, how = render(request.param)
    print(f"rendered {request.param.relative_to(K8S)} with {how}")
    return request.param, objs


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def test_core_objects_match_the_kubernetes_schemas(rendered: tuple[Path, list[Any]]) -> None:
    import kubernetes_validate

    _, objs = rendered
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"} <= kinds
    for obj in objs:
        if obj["kind"] in CRDS:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_secret_template_matches_the_schema() -> None:
    import kubernetes_validate

    secret = yaml.safe_load((K8S / "base" / "kafka-credentials.example.yaml").read_text())
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert set(secret["stringData"]) >= {"FRAUD_KAFKA_SASL_USERNAME", "FRAUD_KAFKA_SASL_PASSWORD"}


def test_crds_have_the_structure_the_operator_reads(rendered: tuple[Path, list[Any]]) -> None:
    _, objs = rendered
    monitor, rule = by_kind(objs, "ServiceMonitor"), by_kind(objs, "PrometheusRule")
    assert monitor["apiVersion"] == rule["apiVersion"] == "monitoring.coreos.com/v1"
    service = next(o for o in objs if o["kind"] == "Service"
                   and o["metadata"]["name"] == "fraud-score-metrics")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in ports
    assert rule["spec"]["groups"] == alert_groups()


def test_statefulset_replicas_match_the_cluster_addresses(
    rendered: tuple[Path, list[Any]]
) -> None:
    _, objs = rendered
    sts, config = by_kind(objs, "StatefulSet"), by_kind(objs, "ConfigMap")
    headless = sts["spec"]["serviceName"]
    name, replicas = sts["metadata"]["name"], sts["spec"]["replicas"]
    template = config["data"].get("FLOW_ADDRESS_TEMPLATE")
    if template:  # autoscaled: the list is made from the replica count (lifecycle/cluster.py)
        assert config["data"]["FLOW_ADDRESSES"] == ""
        assert template == f"{name}-{{i}}.{headless}:2101"
    else:
        addresses = config["data"]["FLOW_ADDRESSES"].split(";")
        assert addresses == [f"{name}-{i}.{headless}:2101" for i in range(replicas)]
    assert 1 <= replicas <= 8  # the transactions partitions
    service = next(o for o in objs if o["metadata"]["name"] == headless)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod = sts["spec"]["template"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_pod_runs_the_entrypoint_non_root_with_probes_limits_and_volume(
    rendered: tuple[Path, list[Any]]
) -> None:
    _, objs = rendered
    sts = by_kind(objs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == image_entrypoint()  # tini as PID 1, then fraud-flow
    assert pod["securityContext"]["runAsNonRoot"] is True
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    # the flow's own grace (lifecycle.process.DEFAULT_GRACE_SECONDS) ends before the kubelet's
    from lifecycle.process import DEFAULT_GRACE_SECONDS

    assert DEFAULT_GRACE_SECONDS + 3 <= pod["terminationGracePeriodSeconds"] <= 60
    assert {"requests", "limits"} <= set(container["resources"])
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == "/data" and "data" in claims
    pdb = by_kind(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]


def image_entrypoint() -> list[str]:
    """ENTRYPOINT + CMD of docker/Dockerfile's runtime stage (exec form)."""
    import json
    import re

    text = (K8S.parent / "docker" / "Dockerfile").read_text().split("AS runtime", 1)[1]
    parts = [json.loads(m) for m in re.findall(r"^(?:ENTRYPOINT|CMD) (\[.*\])$", text, re.M)]
    return [word for part in parts for word in part]


def test_configmap_sets_only_settings_the_flow_knows(rendered: tuple[Path, list[Any]]) -> None:
    _, objs = rendered
    data = by_kind(objs, "ConfigMap")["data"]
    for name in data:
        if name.startswith("FRAUD_") and not name.startswith(("FRAUD_KAFKA_", "FRAUD_TOPIC_")):
            assert name in VARIABLES, name
    assert data["FRAUD_STATE_DIR"].startswith("/data/")
    assert data["FLOW_RECOVERY_DIR"].startswith("/data/")
    from flows.settings import ScoringSettings

    ScoringSettings.from_env({k: v for k, v in data.items() if not k.startswith("FLOW_")})


def test_dev_overlay_changes_namespace_image_and_settings() -> None:
    base, _ = render(K8S / "base")
    dev, _ = render(K8S / "overlays" / "dev")
    assert {o["metadata"].get("namespace") for o in dev if o["kind"] != "Namespace"} == {
        "fraudstream-dev"}
    sts = by_kind(dev, "StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "fraudstream:dev"
    assert by_kind(dev, "ConfigMap")["data"]["FRAUD_LOG_LEVEL"] == "DEBUG"
    assert len(dev) == len(base)


@pytest.mark.skipif(kubectl() is None, reason="kubectl not on PATH: nothing to compare with")
@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda p: p.name)
def test_the_approximation_renders_what_kustomize_renders(directory: Path) -> None:
    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    real, _ = render(directory)
    assert sorted(approximate(directory), key=key) == sorted(real, key=key)


def test_network_policy_admits_only_prometheus_and_peers_and_reaches_only_kafka_and_dns(
    rendered: tuple[Path, list[Any]]
) -> None:
    _, objs = rendered
    policy = next(o for o in objs if o["kind"] == "NetworkPolicy"
                  and o["metadata"]["name"] == "fraud-score")
    sts = by_kind(objs, "StatefulSet")
    spec = policy["spec"]
    pod = sts["spec"]["template"]
    # it selects the flow's pods and denies by default both ways
    assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    (container,) = pod["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = by_kind(objs, "ConfigMap")["data"]

    def port(p: dict[str, Any]) -> int:
        return named[p["port"]] if isinstance(p["port"], str) else int(p["port"])

    ingress = {(port(p), tuple(sorted(src.get("podSelector", {}).get("matchLabels", {}).items())))
               for rule in spec["ingress"] for p in rule["ports"] for src in rule["from"]}
    assert ingress == {
        (int(config["FRAUD_METRICS_PORT"]), (("app.kubernetes.io/name", "prometheus"),)),
        (named["cluster"], (("app.kubernetes.io/name", "fraud-score"),)),
    }
    assert all(rule.get("from") for rule in spec["ingress"])  # no rule open to everyone
    egress_ports = {port(p) for rule in spec["egress"] for p in rule["ports"]}
    kafka_port = int(config["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1])
    assert {named["cluster"], kafka_port, 53} <= egress_ports <= {named["cluster"], 9092, 9093, 53}
    assert all(rule.get("to") for rule in spec["egress"])  # no rule open to everywhere
    kafka_ns = config["KAFKA_BOOTSTRAP_SERVERS"].split(".")[1]  # host.<namespace>.svc:port
    namespaces = {src["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                  for rule in spec["egress"] for src in rule["to"] if "namespaceSelector" in src}
    assert namespaces == {kafka_ns, "kube-system"}


def test_pod_has_no_service_account_token_and_mounts_secrets_read_only(
    rendered: tuple[Path, list[Any]]
) -> None:
    directory, objs = rendered
    pod = by_kind(objs, "StatefulSet")["spec"]["template"]["spec"]
    job = by_kind(objs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    # autoscaled pods read their StatefulSet's size, and only that (the Role below)
    assert pod["automountServiceAccountToken"] is (directory == AUTOSCALE)
    assert job["automountServiceAccountToken"] is False
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert {s["secretName"] for s in secrets.values()} == {
        "fraud-pan-key", "fraud-rules-trusted-keys"}
    assert all(s["defaultMode"] & 0o222 == 0 for s in secrets.values())  # nobody may write
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    for name in secrets:
        assert mounts[name]["readOnly"] is True, name
    for init in pod.get("initContainers", []):  # the seed container needs no secret
        assert not {m["name"] for m in init["volumeMounts"]} & set(secrets)
    # the metrics endpoint listens beyond the loopback only because the policy guards it
    assert by_kind(objs, "ConfigMap")["data"]["FRAUD_METRICS_BIND"] == "0.0.0.0"


def test_autoscaling_reads_only_its_statefulset_and_scales_within_the_shards() -> None:
    """KEDA scales on the flow's lag; pods may get their StatefulSet and nothing else."""
    objs, _ = render(AUTOSCALE)
    sts, config = by_kind(objs, "StatefulSet"), by_kind(objs, "ConfigMap")["data"]
    scaled = by_kind(objs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                      "name": sts["metadata"]["name"]}
    shards = min(int(config["FRAUD_CARD_SHARDS"]), int(config["FRAUD_MERCHANT_SHARDS"]))
    assert 2 <= spec["minReplicaCount"] <= sts["spec"]["replicas"] <= spec["maxReplicaCount"]
    assert spec["maxReplicaCount"] <= shards  # a pod past the shard count would idle
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    # every resize restarts the whole cluster: long windows, small steps
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 900
    assert spec["cooldownPeriod"] >= 900
    assert all(p["periodSeconds"] >= 300 for d in behavior.values() for p in d["policies"])
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert "bytewax_kafka_consumer_lag" in trigger["metadata"]["query"]
    assert config["FRAUD_CHANGELOG"] == "on"  # moved shards are rebuilt from changelogs
    pod = sts["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "fraud-score"
    (role,) = [o for o in objs if o["kind"] == "Role"]
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["statefulsets"],
                              "resourceNames": [sts["metadata"]["name"]], "verbs": ["get"]}]
    (binding,) = [o for o in objs if o["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    assert "{i}" in config["FLOW_ADDRESS_TEMPLATE"] and int(config["FLOW_CLUSTER_WATCH_SECONDS"])
