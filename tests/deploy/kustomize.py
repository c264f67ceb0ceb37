"""Render a kustomization: ``kubectl kustomize`` when on PATH, else a small approximation.

The approximation handles what k8s/ uses: ``resources`` (files and directories),
``namespace``, ``labels`` (metadata only), ``images`` and strategic-merge ``patches``
(maps merged, lists of named items merged by ``name``).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render(directory: Path) -> tuple[list[Obj], str]:
    """The rendered objects and which renderer made them."""
    tool = kubectl()
    if tool:
        out = subprocess.run([tool, "kustomize", str(directory)], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        return [d for d in yaml.safe_load_all(out) if d], "kubectl kustomize"
    return approximate(directory), "approximation"


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    if (isinstance(base, list) and isinstance(patch, list)
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        out_list = list(base)
        for item in patch:
            at = next((i for i, b in enumerate(out_list) if b["name"] == item["name"]), None)
            if at is None:
                out_list.append(item)
            else:
                out_list[at] = _merge(out_list[at], item)
        return out_list
    if (isinstance(base, list) and isinstance(patch, list)
            and all(isinstance(i, dict) and "name" in i.get("metadata", {})
                    for i in base + patch)):
        named = {b["metadata"]["name"]: b for b in base}
        for item in patch:
            name = item["metadata"]["name"]
            named[name] = _merge(named.get(name, {}), item)
        return list(named.values())
    return copy.deepcopy(patch)


def _images(obj: Any, images: list[Obj]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    name, _, tag = c["image"].partition(":")
                    for img in images:
                        if img["name"] == name:
                            c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
            else:
                _images(value, images)
    elif isinstance(obj, list):
        for item in obj:
            _images(item, images)


def approximate(directory: Path) -> list[Obj]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objs: list[Obj] = []
    for res in k.get("resources", []):
        path = directory / res
        if path.is_dir():
            objs += approximate(path)
        else:
            objs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for entry in k.get("patches", []):
        patch = yaml.safe_load((directory / entry["path"]).read_text())
        for i, obj in enumerate(objs):
            if (obj["kind"], obj["metadata"]["name"]) == (patch["kind"],
                                                          patch["metadata"]["name"]):
                objs[i] = _merge(obj, patch)
    for obj in objs:
        for group in k.get("labels", []):
            obj["metadata"].setdefault("labels", {}).update(group["pairs"])
        if "namespace" in k:
            if obj["kind"] == "Namespace":
                obj["metadata"]["name"] = k["namespace"]
            else:
                obj["metadata"]["namespace"] = k["namespace"]
        _images(obj, k.get("images", []))
    return objs
