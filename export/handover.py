"""The hand-over from training to export: data files only, so exporting never runs code from a file.

``just train`` used to leave only ``model.pkl`` and ``just export-onnx`` unpickled it
first thing: a swapped pickle ran its code with the exporter's rights (on the
machine that can publish models). Now training converts the ensemble itself, in
the process that fitted it, and writes ``<out>/handover/``:

==================  =====================================================================
``model.onnx``      the whole ensemble as one graph, with its metadata (version, feature
                    names, thresholds, training metrics) and probe rows
                    (:func:`export.onnx.export_trained`, parity-checked against the
                    native model before it is written)
``holdout.parquet`` held-out rows for the champion gate (:meth:`export.gates.Holdout.to_table`:
                    card pseudonyms, never card ids)
``reference.parquet`` the scored training reference rows for ``just drift-report``
``handover.json``   format tag, model version, the parity outcome and the SHA-256 of the
                    three files above
==================  =====================================================================

``just export-onnx`` (:func:`load`) reads these with ``json``, ``onnx`` (protobuf)
and ``pyarrow.parquet`` (26.x; the Parquet reader unpickles no extension type since
14.0.1, CVE-2023-47248): none of them executes code from the data. It refuses a
directory that holds only a ``model.pkl`` (:class:`HandoverError`, "run `just train`
again"); it never imports ``pickle``.

Why this and not the alternatives: skops (0.16, PyPI) has no XGBoost support of its own
and would load the booster through a trusted-types list we would have to keep right;
a digest or signature beside the pickle still ends in ``pickle.load`` and needs a key
to manage. ONNX is already the format that serves, so the exporter now handles only
what the flow handles. The digests catch a truncated or mixed-up copy; they are not
an authentication (a writer of the directory can rewrite them), which is acceptable
because nothing here runs code and the probe rows, gates and registry checks still
apply to whatever the files hold.

The in-memory path is unchanged in effect: :func:`export.release.release` given a
fitted ``TrainedModel`` (``just retrain``, tests) builds the hand-over with
:meth:`Handover.from_trained` without writing it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.gates import Holdout
from export.parity import ParityReport

#: Directory inside the training output that holds the hand-over.
HANDOVER_DIR = "handover"
MANIFEST = "handover.json"
FORMAT = "fraudstream-handover-v1"
ONNX_FILE = "model.onnx"
HOLDOUT_FILE = "holdout.parquet"
REFERENCE_FILE = "reference.parquet"


class HandoverError(ExportError):
    """The training hand-over is missing, incomplete or inconsistent; export refuses it."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Handover:
    """What export publishes: ONNX bytes (with metadata), parity, held-out and reference rows.

    ``holdout``: :class:`export.gates.Holdout` or None (artifacts without labels);
    ``reference``: a ``pyarrow.Table`` (features, score, decision[, is_fraud]).
    """

    onnx_bytes: bytes
    parity: ParityReport
    holdout: Holdout | None
    reference: Any

    @property
    def metadata(self) -> Any:
        """The :class:`export.metadata.ModelMetadata` inside the ONNX file."""
        import onnx

        from export.metadata import ModelMetadata

        proto = onnx.load_from_string(self.onnx_bytes)
        return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})

    @classmethod
    def from_trained(cls, trained: Any, version: str | None = None) -> Handover:
        """Convert a fitted ``training.artifact.TrainedModel`` in memory (parity-checked).

        Raises :class:`export.errors.ParityError` when ONNX and native scores disagree.
        """
        from export.onnx import export_trained, reference_table

        data, parity = export_trained(trained, version)
        return cls(data, parity, Holdout.from_trained(trained), reference_table(trained, data))

    def with_version(self, version: str) -> Handover:
        """The same model published under another version (only the metadata changes)."""
        import onnx

        from export.onnx import set_metadata

        meta = self.metadata
        if meta.model_version == version:
            return self
        proto = onnx.load_from_string(self.onnx_bytes)
        set_metadata(proto, replace(meta, model_version=version))
        return replace(self, onnx_bytes=proto.SerializeToString())

    def save(self, out_dir: Path) -> Path:
        """Write ``out_dir/handover/`` (the files of the module docstring); return it."""
        import io

        import pyarrow.parquet as pq

        target = Path(out_dir) / HANDOVER_DIR
        target.mkdir(parents=True, exist_ok=True)
        names = self.metadata.feature_names
        blobs = {ONNX_FILE: self.onnx_bytes}
        tables = {REFERENCE_FILE: self.reference}
        if self.holdout is not None:
            tables[HOLDOUT_FILE] = self.holdout.to_table(names)
        for name, table in tables.items():
            buf = io.BytesIO()
            pq.write_table(table, buf)
            blobs[name] = buf.getvalue()
        for name, data in blobs.items():
            (target / name).write_bytes(data)
        if self.holdout is None:
            (target / HOLDOUT_FILE).unlink(missing_ok=True)  # a stale one from an earlier run
        manifest = {"format": FORMAT, "model_version": self.metadata.model_version,
                    "parity": asdict(self.parity),
                    "sha256": {name: _sha256(data) for name, data in sorted(blobs.items())}}
        (target / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return target


def locate(path: Path) -> Path:
    """The hand-over directory for ``--model``: a training output, its ``handover/``, a file in it.

    Raises :class:`HandoverError` (with what to do) when there is none, also when only a
    ``model.pkl`` is there: export never unpickles.
    """
    path = Path(path)
    if path.is_file():
        path = path.parent
    for candidate in (path / HANDOVER_DIR, path):
        if (candidate / MANIFEST).is_file():
            return candidate
    pickled = (path / "model.pkl").is_file()
    raise HandoverError(
        f"no training hand-over ({HANDOVER_DIR}/{MANIFEST}) in {path}"
        + (": it holds only model.pkl, which export does not load (a pickle runs code); "
           if pickled else "; ")
        + "run `just train DATA=<history>` (it writes the hand-over), then `just export-onnx`"
    )


def load(path: Path) -> Handover:
    """Read a hand-over written by :meth:`Handover.save` (no code from the files runs).

    Raises :class:`HandoverError` for a missing directory or file, another format, a
    file whose SHA-256 differs from the manifest, or an ONNX file without our metadata.
    """
    import io

    import pyarrow.parquet as pq

    from export.metadata import ModelMetadata

    where = locate(path)
    try:
        manifest = json.loads((where / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HandoverError(f"{where / MANIFEST}: unreadable ({exc}); run `just train` again") \
            from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise HandoverError(f"{where / MANIFEST}: not a {FORMAT} manifest; run `just train` again")
    digests = manifest.get("sha256", {})
    blobs: dict[str, bytes] = {}
    for name in (ONNX_FILE, REFERENCE_FILE, HOLDOUT_FILE):
        if name not in digests:
            if name == HOLDOUT_FILE:
                continue
            raise HandoverError(f"{where / MANIFEST} lists no {name}; run `just train` again")
        try:
            data = (where / name).read_bytes()
        except OSError as exc:
            raise HandoverError(f"{where / name}: {exc.strerror}; run `just train` again") \
                from None
        if _sha256(data) != digests[name]:
            raise HandoverError(
                f"{where / name} is not the file training wrote (SHA-256 differs from "
                f"{MANIFEST}): a partial copy or a mix of two runs; copy the whole "
                f"{HANDOVER_DIR}/ directory again, or run `just train` again"
            )
        blobs[name] = data
    try:
        import onnx

        proto = onnx.load_from_string(blobs[ONNX_FILE])
        meta = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    except Exception as exc:  # protobuf or metadata errors: one remedy
        raise HandoverError(f"{where / ONNX_FILE}: not an exported model ({exc}); "
                            "run `just train` again") from None
    if meta.model_version != manifest.get("model_version"):
        raise HandoverError(f"{where}: the ONNX file says {meta.model_version!r}, the manifest "
                            f"{manifest.get('model_version')!r}; run `just train` again")
    parity = ParityReport(**manifest["parity"])
    reference = pq.read_table(io.BytesIO(blobs[REFERENCE_FILE]))
    holdout = (Holdout.from_table(pq.read_table(io.BytesIO(blobs[HOLDOUT_FILE])),
                                  meta.feature_names) if HOLDOUT_FILE in blobs else None)
    return Handover(blobs[ONNX_FILE], parity, holdout, reference)
