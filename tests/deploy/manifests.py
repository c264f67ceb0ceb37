"""Walk rendered manifests (pod templates, containers, volumes) and run the seed-models step."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from deploy.kustomize import render
from deploy.queries import K8S, ROOT

Obj = dict[str, Any]

FLOW = ("StatefulSet", "fraud-score")
RETRAIN = ("CronJob", "fraud-retrain")
SEED = "seed-models"


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    """The one object of ``kind`` named ``name``."""
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def pod_template(obj: Obj) -> Obj:
    """The pod template of a StatefulSet, Deployment, Job or CronJob."""
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"])
    return dict(obj["spec"]["template"])


def workloads(objs: list[Obj]) -> Iterator[Obj]:
    """Every object that runs pods."""
    yield from (o for o in objs if o["kind"] in ("StatefulSet", "Deployment", "Job", "CronJob"))


def all_containers(pod: Obj) -> list[Obj]:
    """Init containers, then containers, of a pod spec."""
    return [*pod.get("initContainers", []), *pod["containers"]]


def container(pod: Obj, name: str) -> Obj:
    """The container (or init container) ``name`` of a pod spec."""
    (found,) = [c for c in all_containers(pod) if c["name"] == name]
    return found


def claim_of(obj: Obj, volume: str) -> str:
    """The PVC behind ``volume`` of a workload: a claim template's name or a claimName."""
    pod = pod_template(obj)["spec"]
    for v in pod.get("volumes", []):
        if v["name"] == volume:
            assert "persistentVolumeClaim" in v, f"{volume} is not a persistent volume"
            return str(v["persistentVolumeClaim"]["claimName"])
    for t in obj["spec"].get("volumeClaimTemplates", []):
        if t["metadata"]["name"] == volume:
            return f"<per-pod claim {volume}>"
    raise AssertionError(f"volume {volume} is not declared in {obj['metadata']['name']}")


def mount_of(c: Obj, path: str) -> Obj:
    """The volume mount of container ``c`` that holds ``path`` (longest mount path wins)."""
    candidates = [m for m in c.get("volumeMounts", [])
                  if Path(path).is_relative_to(m["mountPath"])]
    assert candidates, f"{path} is on no volume of container {c['name']}"
    return dict(max(candidates, key=lambda m: len(m["mountPath"])))


def env_of(c: Obj, config_maps: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps (envFrom) and its own ``env``."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def rendered_base() -> list[Obj]:
    """``k8s/base`` rendered."""
    return render(K8S / "base")[0]


def seed_step(objs: list[Obj] | None = None) -> tuple[list[str], dict[str, str]]:
    """The seed-models init container's command line and its own environment."""
    sts = find(objs or rendered_base(), *FLOW)
    init = container(pod_template(sts)["spec"], SEED)
    return [*init["command"], *init.get("args", [])], {e["name"]: e["value"] for e in init["env"]}


def run_seed(baked: Path, registry: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the manifest's seed step with the image's model at ``baked`` into ``registry``."""
    argv, kwargs = seed_popen_args(baked, registry)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          **kwargs)


def seed_popen_args(baked: Path, registry: Path) -> tuple[list[str], dict[str, Any]]:
    """Arguments for ``subprocess`` running the seed step (this interpreter for ``python``)."""
    argv, _ = seed_step()
    assert argv[0] == "python", argv
    env = {**os.environ, "SEED_FROM": str(baked), "MODELS_DIR": str(registry)}
    return [sys.executable, *argv[1:]], {"env": env, "cwd": ROOT}
