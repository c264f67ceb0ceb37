"""The training-to-export hand-over runs no code from a file, and carries no card ids."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export.gates import Holdout
from export.handover import HANDOVER_DIR, MANIFEST, ONNX_FILE, HandoverError, load
from export.pseudonym import card_pseudonyms
from export.release import main as export_main
from training.report import card_precision_at_k


class _Payload:
    """A pickle that, when loaded, creates a file: what a swapped model.pkl could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _plant_pickle(directory: Path, marker: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    assert not marker.exists()


def test_export_refuses_a_bare_pickle_without_loading_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    _plant_pickle(tmp_path / "run", marker)
    code = export_main(["--model", str(tmp_path / "run"), "--models-dir", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.pkl, which export does not load" in err and "just train" in err
    assert not marker.exists()  # the payload never ran
    code = export_main(["--model", str(tmp_path / "run" / "model.pkl"),
                        "--models-dir", str(tmp_path / "m")])
    assert code == 2 and not marker.exists()
    assert not (tmp_path / "m" / "current").exists()


def test_export_reads_the_handover_and_never_the_pickle_beside_it(
    tiny: Any, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny.out, run)
    marker = tmp_path / "pwned"
    _plant_pickle(run, marker)  # replaces the real model.pkl with a hostile one
    models = tmp_path / "models"
    assert export_main(["--model", str(run), "--models-dir", str(models),
                        "--version", "v-h"]) == 0
    assert not marker.exists()
    published = (models / "v-h" / ONNX_FILE).read_bytes()
    handed = load(run).with_version("v-h").onnx_bytes
    assert published == handed


def test_a_file_changed_after_training_is_refused(tiny: Any, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny.out / HANDOVER_DIR, run / HANDOVER_DIR)
    onnx_path = run / HANDOVER_DIR / ONNX_FILE
    onnx_path.write_bytes(onnx_path.read_bytes()[:-10])  # truncated copy
    with pytest.raises(HandoverError, match="SHA-256 differs"):
        load(run)
    manifest = json.loads((run / HANDOVER_DIR / MANIFEST).read_text())
    manifest["format"] = "something-else"
    (run / HANDOVER_DIR / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(HandoverError, match="not a fraudstream-handover-v1"):
        load(run)


def test_no_card_id_in_the_artifact_the_handover_or_the_published_holdout(
    tiny: Any, tmp_path: Path
) -> None:
    cards = {str(c) for c in tiny.history.card_id}
    refs = tiny.trained.holdout_card_id
    assert refs is not None and len(refs) > 0
    assert not cards & {str(r) for r in refs}
    table = pq.read_table(tiny.out / HANDOVER_DIR / "holdout.parquet")
    assert "card_id" not in table.column_names
    assert not cards & set(table.column("card_ref").to_pylist())
    models = tmp_path / "models"
    assert export_main(["--model", str(tiny.out), "--models-dir", str(models),
                        "--version", "v-p"]) == 0
    published = pq.read_table(models / "v-p" / "holdout.parquet")
    assert "card_id" not in published.column_names
    values = {str(v) for col in published.columns for v in col.to_pylist()}
    assert not cards & values


def test_pseudonyms_keep_the_card_grouping_so_the_gate_metric_is_unchanged() -> None:
    rng = np.random.default_rng(3)
    n = 2_000
    cards = np.array([f"4111{rng.integers(0, 10**12):012d}" for _ in range(300)],
                     dtype=object)[rng.integers(0, 300, n)]
    scores = rng.random(n).astype(np.float32)
    y = rng.random(n) < 0.1
    et = rng.integers(0, 5 * 86_400_000, n)
    refs = card_pseudonyms(cards)
    assert len(set(refs)) == len(set(cards))
    assert all((refs[i] == refs[j]) == (cards[i] == cards[j]) for i, j in
               rng.integers(0, n, (500, 2)))
    assert card_precision_at_k(scores, y, et, refs, 100) == card_precision_at_k(
        scores, y, et, cards, 100)
    assert not set(card_pseudonyms(cards)) & set(refs)  # a fresh key per call: not joinable


def test_a_legacy_holdout_with_card_ids_is_pseudonymised_when_read() -> None:
    names = ("a", "b")
    table = pa.table({"a": [1.0, 2.0, 3.0], "b": [0.0, 0.0, 1.0], "is_fraud": [False, True, True],
                      "event_time": [1, 2, 3], "card_id": ["4111111111111111", "x", "x"]})
    holdout = Holdout.from_table(table, names)
    assert holdout.card_ref is not None
    assert "4111111111111111" not in set(holdout.card_ref)
    assert holdout.card_ref[1] == holdout.card_ref[2] != holdout.card_ref[0]
    out = holdout.to_table(names)
    assert "card_id" not in out.column_names and "card_ref" in out.column_names


def test_no_module_of_the_export_room_can_unpickle() -> None:
    """What export reads stays data: no module of ``export/`` imports pickle or joblib."""
    import ast

    import export

    room = Path(export.__file__).parent
    modules = sorted(room.glob("*.py"))
    assert len(modules) >= 10
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"pickle", "joblib", "dill", "cloudpickle"}, (
                    f"{path.name} imports {name}")
