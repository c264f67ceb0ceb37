"""The model registry on disk: immutable ``models/<version>/`` and a ``models/current`` symlink.

A version directory holds ``model.onnx``, ``MODEL_CARD.md``, the evaluation
report (``report.md``, ``metrics.json``, PNG plots) and ``reference.parquet`` (the
scored training reference rows that ``just drift-report`` compares the stream
with). It is assembled in a temporary directory and renamed into place, so
readers never see half a version; files are made read-only and an existing
version is never overwritten. ``current`` (the champion) and ``shadow`` (the
challenger) are swapped atomically (``os.replace`` of a fresh symlink). A version
may also hold ``holdout.parquet`` (held-out rows with labels, for the champion
comparison of :mod:`export.gates`) and ``gates.json`` (the gate report at export).
States, history and audit live in :mod:`export.lifecycle`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pyarrow as pa

from export.errors import RegistryError
from export.gates import HOLDOUT_FILE
from export.metadata import ModelMetadata
from export.model import MODEL_FILE
from export.parity import ParityReport

CURRENT = "current"
SHADOW = "shadow"
GATES_FILE = "gates.json"
REFERENCE_FILE = "reference.parquet"
REPORT_FILES = ("report.md", "metrics.json")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ModelRegistry:
    """Versions under ``root``; ``root/current`` points at the serving one."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, version: str) -> Path:
        """Directory of ``version`` (may not exist)."""
        return self.root / version

    def versions(self) -> list[str]:
        """Published versions, sorted by name."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
        )

    def current(self) -> str | None:
        """Version ``current`` points at, if any."""
        return self._target(CURRENT)

    def shadow(self) -> str | None:
        """Version ``shadow`` (the challenger) points at, if any."""
        return self._target(SHADOW)

    def _target(self, name: str) -> str | None:
        link = self.root / name
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def check_new(self, version: str) -> None:
        """Raise :class:`RegistryError` unless ``version`` is a valid, unused name."""
        if not _VERSION.match(version) or version in (CURRENT, SHADOW):
            raise RegistryError(
                f"invalid model version {version!r}: use letters, digits, '.', '_', '-'"
            )
        if self.path(version).exists():
            raise RegistryError(
                f"model version {version!r} already exists in {self.root}; versions are "
                "immutable, export under a new --version"
            )

    def publish(
        self,
        version: str,
        onnx_bytes: bytes,
        report_dir: Path | None = None,
        parity: ParityReport | None = None,
        make_current: bool = True,
        reference: pa.Table | None = None,
        holdout: pa.Table | None = None,
        gates: dict[str, Any] | None = None,
    ) -> Path:
        """Write a new version (ONNX, model card, report, reference rows); optionally current.

        ``holdout`` (held-out rows with labels) and ``gates`` (the gate report) are stored
        as ``holdout.parquet`` and ``gates.json`` when given.
        """
        self.check_new(version)
        import onnx

        try:
            props = {p.key: p.value for p in onnx.load_from_string(onnx_bytes).metadata_props}
            meta = ModelMetadata.from_props(props)
        except Exception as exc:
            raise RegistryError(f"not an exported model (no fraudstream metadata): {exc}") from exc
        if meta.model_version != version:
            raise RegistryError(
                f"the ONNX file says model version {meta.model_version!r}, not {version!r}; "
                "export with the version you publish"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{version}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        (tmp / MODEL_FILE).write_bytes(onnx_bytes)
        (tmp / "MODEL_CARD.md").write_text(model_card(meta, parity))
        import pyarrow.parquet as pq

        if reference is not None:
            pq.write_table(reference, tmp / REFERENCE_FILE)
        if holdout is not None:
            pq.write_table(holdout, tmp / HOLDOUT_FILE)
        if gates is not None:
            (tmp / GATES_FILE).write_text(json.dumps(gates, indent=2, sort_keys=True) + "\n")
        if report_dir is not None and report_dir.is_dir():
            for src in report_dir.iterdir():
                if src.name in REPORT_FILES or src.suffix == ".png":
                    shutil.copy2(src, tmp / src.name)
        for f in tmp.iterdir():
            f.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        target = self.path(version)
        try:
            tmp.rename(target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RegistryError(f"cannot publish {target}: {exc}") from exc
        if make_current:
            self.set_current(version)
        return target

    def set_current(self, version: str) -> None:
        """Point ``current`` at an existing version (atomic swap)."""
        self._link(CURRENT, version)

    def set_shadow(self, version: str) -> None:
        """Point ``shadow`` at an existing version (atomic swap)."""
        self._link(SHADOW, version)

    def clear_shadow(self) -> None:
        """Remove the ``shadow`` link (no challenger)."""
        (self.root / SHADOW).unlink(missing_ok=True)

    def _link(self, name: str, version: str) -> None:
        if not (self.path(version) / MODEL_FILE).is_file():
            raise RegistryError(
                f"cannot make {version!r} {name}: {self.path(version)} has no model"
            )
        tmp_link = self.root / f".{name}-{os.getpid()}"
        if tmp_link.is_symlink():
            tmp_link.unlink()
        tmp_link.symlink_to(version)
        os.replace(tmp_link, self.root / name)


def model_card(meta: ModelMetadata, parity: ParityReport | None = None) -> str:
    """Markdown model card from the embedded metadata."""
    m = meta.training_metrics
    test = m.get("test", {}).get("ensemble", {}) if isinstance(m.get("test"), dict) else {}
    n_feat = len(meta.feature_names)
    members = ", ".join(f"{k}: {v:g}" for k, v in meta.members.items())
    lines = [
        f"# Model card: {meta.model_version}",
        "",
        "Card-fraud probability for one transaction, from point-in-time behavioural features.",
        "",
        "| | |",
        "|---|---|",
        f"| created | {meta.created_at} |",
        f"| feature spec | {meta.feature_spec_version} ({n_feat} float32 features) |",
        f"| members (soft-vote weights) | {members} |",
        f"| opsets | {json.dumps(meta.opsets)} |",
        f"| review threshold | {meta.thresholds.review:.6g} |",
        f"| decline threshold | {meta.thresholds.decline:.6g} |",
        f"| threshold policy | {meta.thresholds.policy} |",
    ]
    for key in ("auc_roc", "average_precision", "card_precision_at_100"):
        if key in test:
            lines.append(f"| test {key.replace('_', ' ')} | {test[key]:.4f} |")
    if parity is not None:
        lines.append(
            f"| ONNX parity | max abs diff {parity.max_abs_diff:.2e} on {parity.rows} held-out "
            "rows, "
            f"{parity.decision_mismatches} decision mismatches |"
        )
    data = m.get("data", {})
    lines += [
        "",
        "## Training data",
        "",
        "```json",
        json.dumps(data, indent=2, sort_keys=True),
        "```",
        "",
        "## Intended use and limits",
        "",
        "- Input: the ordered feature vector of `state.spec` at the version above; the flow "
        "refuses the model if its feature spec differs.",
        "- Scores are ranking scores on the training class balance (after any resampling), not "
        "calibrated probabilities; use the thresholds, which were chosen on validation.",
        "- Trained on labels known at the training cut-off; late-arriving fraud labels were "
        "counted as legitimate so far (see report.md).",
        "- Per-feature and score reference histograms are embedded for drift (PSI) monitoring.",
        f"- `{REFERENCE_FILE}` (when present) holds the reference rows, scored by this model, "
        "for `just drift-report`.",
        "",
        "## Features",
        "",
        ", ".join(f"`{n}`" for n in meta.feature_names),
        "",
        "See `report.md` for the evaluation.",
        "",
    ]
    return "\n".join(lines)
