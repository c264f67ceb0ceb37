"""The models volume: declared and mounted, shared by the flow and the retrain job, seeded once.

The seed-models init container's script is taken from the rendered StatefulSet and run
here as the pod would run it (this interpreter, the image's environment variables pointed
at temporary directories): on a real exported model, on an image without a model, on a
registry that already has a champion, and three pods at once.
"""

from __future__ import annotations

import filecmp
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploy.kustomize import render
from deploy.manifests import (
    FLOW,
    RETRAIN,
    SEED,
    all_containers,
    claim_of,
    container,
    env_of,
    find,
    mount_of,
    pod_template,
    run_seed,
    seed_popen_args,
    seed_step,
    workloads,
)
from deploy.queries import DOCKER, K8S, ROOT
from export.lifecycle import AUDIT_FILE, Lifecycle
from export.registry import CURRENT, SHADOW

OVERLAYS = [K8S / "base", K8S / "overlays" / "dev"]
RUNTIME = (DOCKER / "Dockerfile").read_text().split("AS runtime", 1)[1]


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def objs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)[0]


def config_maps(objs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}


# ---- the manifests ------------------------------------------------------------------------


def test_every_mounted_volume_is_declared_and_every_claim_exists(
    objs: list[dict[str, Any]]
) -> None:
    claims = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    for obj in workloads(objs):
        pod = pod_template(obj)["spec"]
        declared = {v["name"] for v in pod.get("volumes", [])}
        templates = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        assert not declared & templates, "a volume is both a pod volume and a claim template"
        mounted = set()
        for c in all_containers(pod):
            names = [m["name"] for m in c.get("volumeMounts", [])]
            paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
            assert len(set(paths)) == len(paths), f"{c['name']} mounts a path twice"
            assert set(names) <= declared | templates, (obj["metadata"]["name"], c["name"])
            mounted |= set(names)
        assert declared | templates <= mounted, f"{obj['metadata']['name']}: unused volume"
        for v in pod.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, v


def test_every_container_is_non_root_read_only_and_bounded(objs: list[dict[str, Any]]) -> None:
    uid = int(re.search(r"^ARG UID=(\d+)$", RUNTIME, re.M).group(1))  # type: ignore[union-attr]
    for obj in workloads(objs):
        pod = pod_template(obj)["spec"]
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == uid == ctx["fsGroup"]
        for c in all_containers(pod):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert {"requests", "limits"} <= set(c["resources"]), c["name"]
            # a read-only root: every writer needs its own /tmp
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, c["name"]


def test_the_flow_serves_the_volume_the_retrain_job_promotes_into(
    objs: list[dict[str, Any]]
) -> None:
    sts, job = find(objs, *FLOW), find(objs, *RETRAIN)
    maps = config_maps(objs)
    flow_pod = pod_template(sts)["spec"]
    flow = container(flow_pod, "flow")
    env = env_of(flow, maps)
    model_path = env["FRAUD_MODEL_PATH"]
    flow_mount = mount_of(flow, model_path)
    models = claim_of(sts, flow_mount["name"])
    # the flow reads the registry's current link, on a read-only mount of the shared claim
    assert Path(model_path) == Path(flow_mount["mountPath"]) / CURRENT
    assert flow_mount.get("readOnly") is True
    if "FRAUD_SHADOW_MODEL_PATH" in env:  # optional, and then the registry's shadow link
        assert Path(env["FRAUD_SHADOW_MODEL_PATH"]) == Path(flow_mount["mountPath"]) / SHADOW
    # the retrain job promotes into the same claim
    (retrain,) = pod_template(job)["spec"]["containers"]
    args = retrain["args"]
    job_dir = args[args.index("--models-dir") + 1]
    job_mount = mount_of(retrain, job_dir)
    assert Path(job_mount["mountPath"]) == Path(job_dir)
    assert claim_of(job, job_mount["name"]) == models
    assert not job_mount.get("readOnly")
    # the seed step writes into the same claim, from where the Dockerfile bakes the model
    seed = container(flow_pod, SEED)
    seed_env = {e["name"]: e["value"] for e in seed["env"]}
    seed_mount = mount_of(seed, seed_env["MODELS_DIR"])
    assert Path(seed_mount["mountPath"]) == Path(seed_env["MODELS_DIR"]) == Path(job_dir)
    assert claim_of(sts, seed_mount["name"]) == models and not seed_mount.get("readOnly")
    baked = re.search(r"^COPY \$\{MODEL_DIR\}/ (\S+)$", RUNTIME, re.M)
    assert baked and Path(baked.group(1)) == Path(seed_env["SEED_FROM"])
    assert seed["image"] == flow["image"]  # the same code and the same baked model
    # pods on several nodes and the job mount it at once
    pvc = find(objs, "PersistentVolumeClaim", models)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_job_only_settings_stay_out_of_the_flow_config(objs: list[dict[str, Any]]) -> None:
    from export.mlflow_sync import MODEL_NAME_ENV, TRACKING_ENV

    data = config_maps(objs)["fraud-score-config"]
    assert not [k for k in data if k.startswith("MLFLOW_") or k == MODEL_NAME_ENV]
    job = find(objs, *RETRAIN)
    (retrain,) = pod_template(job)["spec"]["containers"]
    for source in retrain["envFrom"]:
        if "secretRef" in source:  # credentials and MLflow: created per environment
            assert source["secretRef"]["optional"] is True
    runtime_lock = (ROOT / "requirements-runtime.lock").read_text()
    if not re.search(r"^mlflow(-skinny)?==", runtime_lock, re.M):
        # the image cannot talk to MLflow: turning it on is an explicit, documented step
        assert TRACKING_ENV not in env_of(retrain, config_maps(objs))


def test_the_commands_the_manifests_run_exist() -> None:
    import importlib.util

    objs = render(K8S / "base")[0]
    for obj in workloads(objs):
        for c in all_containers(pod_template(obj)["spec"]):
            argv = [*c.get("command", []), *c.get("args", [])]
            if argv[:2] == ["python", "-m"]:
                assert importlib.util.find_spec(argv[2]) is not None, argv[2]
            if argv[:2] == ["python", "-c"]:
                compile(argv[2], f"<{c['name']}>", "exec")


# ---- the seed step, run ---------------------------------------------------------------------


@pytest.fixture()
def baked(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The image's /app/models/current: a published version directory, copied (COPY)."""
    target = tmp_path / "app-models-current"
    shutil.copytree(tiny_model_dir, target)
    return target


def seeded_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def test_seed_publishes_the_baked_model_as_the_champion(baked: Path, tmp_path: Path) -> None:
    from export.model import load_model

    registry = tmp_path / "models"
    registry.mkdir()  # the mounted volume's root
    out = seeded_ok(run_seed(baked, registry))
    version = load_model(baked).version
    assert f"current -> {version}" in out
    assert (registry / CURRENT).is_symlink() and Path((registry / CURRENT).readlink()).name \
        == version
    # the version directory is the baked one, file for file, read-only like export's
    cmp = filecmp.dircmp(baked, registry / version)
    assert not (cmp.left_only or cmp.right_only or cmp.diff_files), cmp.report()
    for f in (registry / version).iterdir():
        assert not f.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), f
    lifecycle = Lifecycle(registry)
    assert lifecycle.champion() == version and lifecycle.records()[version].state == "champion"
    assert [r["action"] for r in lifecycle.audit()] == ["publish", "promote"]
    assert lifecycle.records()[version].metrics  # the model's test metrics, for `models`
    # what the flow does with FRAUD_MODEL_PATH=/models/current
    assert load_model(registry / CURRENT).version == version

    # idempotent: a restart (or the other pod) changes nothing
    audit = (registry / AUDIT_FILE).read_text()
    out = seeded_ok(run_seed(baked, registry))
    assert "nothing to seed" in out
    assert (registry / AUDIT_FILE).read_text() == audit


def test_seed_leaves_an_existing_champion_alone(baked: Path, tmp_path: Path) -> None:
    registry = tmp_path / "models"
    shutil.copytree(baked, registry / "v-promoted-by-the-job")
    (registry / CURRENT).symlink_to("v-promoted-by-the-job")
    out = seeded_ok(run_seed(baked, registry))
    assert "nothing to seed" in out
    assert Lifecycle(registry).registry.versions() == ["v-promoted-by-the-job"]
    assert Path((registry / CURRENT).readlink()).name == "v-promoted-by-the-job"


def test_pods_seeding_at_once_publish_one_version(baked: Path, tmp_path: Path) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    argv, kwargs = seed_popen_args(baked, registry)
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              **kwargs) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    lifecycle = Lifecycle(registry)
    assert len(lifecycle.registry.versions()) == 1
    assert [r["action"] for r in lifecycle.audit()] == ["publish", "promote"]
    assert sum("nothing to seed" in out for out, _ in outs) == 2
    assert not [p for p in registry.iterdir() if p.name.startswith(".tmp-")]


def test_an_image_without_a_model_seeds_nothing_and_the_flow_refuses(tmp_path: Path) -> None:
    from export.errors import ModelLoadError
    from export.model import load_model

    registry = tmp_path / "models"
    registry.mkdir()
    out = seeded_ok(run_seed(ROOT / "docker" / "no-model", registry))  # the image's default
    assert "the flow will refuse to start" in out and "MODEL_DIR" in out
    assert not (registry / CURRENT).exists()
    with pytest.raises(ModelLoadError, match=r"no model at .*current"):
        load_model(registry / CURRENT)  # the flow's start-up: "cannot start: no model at ..."


def test_a_baked_model_the_code_refuses_stops_the_pod_with_one_line(
    baked: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    model = baked / "model.onnx"
    model.chmod(0o644)
    model.write_bytes(model.read_bytes()[:1000])  # truncated: not a readable ONNX model
    result = run_seed(baked, registry)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{SEED}: cannot seed {registry}") and "ONNX" in line, line
    assert not (registry / CURRENT).exists() and not Lifecycle(registry).registry.versions()


def test_the_seed_step_is_configured_only_by_its_own_variables() -> None:
    argv, env = seed_step()
    assert set(env) == {"SEED_FROM", "MODELS_DIR"}
    assert argv[:2] == ["python", "-c"]
    assert not re.search(r"FRAUD_[A-Z_]+", argv[2])  # nothing the flow would also read
