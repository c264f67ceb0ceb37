"""Gates, lifecycle states, promotion, rollback, shadow and audit on a real registry."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from export.cli import main as cli
from export.errors import GateError, LifecycleError
from export.gates import GateConfig, Holdout, champion_checks, minimum_checks, shadow_checks
from export.lifecycle import Lifecycle
from export.model import load_model
from export.release import main as export_main
from export.release import release
from topics.contracts import DriftSnapshot, LabelFeedback, ShadowSummary

DAY = 86_400_000


def test_gate_config_defaults_file_and_flags(tmp_path: Path) -> None:
    assert GateConfig().min_auc_roc == 0.80
    (tmp_path / "g.toml").write_text(
        "[gates]\nmin_auc_roc = 0.9\nrequire_champion_comparison = true\n")
    cfg = GateConfig.load(tmp_path / "g.toml", ["min_average_precision=0.5"])
    assert (cfg.min_auc_roc, cfg.min_average_precision, cfg.require_champion_comparison) == (
        0.9, 0.5, True)
    (tmp_path / "g.json").write_text(json.dumps({"shadow_min_days": 3}))
    assert GateConfig.load(tmp_path / "g.json").shadow_min_days == 3.0
    with pytest.raises(GateError, match="unknown gate setting 'min_auc'; known: "):
        GateConfig.load(None, ["min_auc=0.9"])
    with pytest.raises(GateError, match="expected float"):
        GateConfig.load(None, ["min_auc_roc=high"])


def test_minimums_read_the_training_reports_test_period(tiny: Any) -> None:
    test = tiny.trained.metrics["test"]["ensemble"]
    checks = {c.name: c for c in minimum_checks(tiny.trained.metrics, GateConfig())}
    assert checks["auc_roc"].value == test["auc_roc"] and checks["auc_roc"].passed
    strict = GateConfig(min_average_precision=test["average_precision"] + 0.01)
    failed = [c for c in minimum_checks(tiny.trained.metrics, strict) if not c.passed]
    assert [c.name for c in failed] == ["average_precision"]
    assert "average_precision" in failed[0].describe() and "<" in failed[0].describe()


def test_champion_comparison_scores_both_models_on_the_same_rows(tiny: Any, other: Any) -> None:
    from export.model import ScoringModel
    from export.onnx import export_trained

    mine = ScoringModel.from_bytes(export_trained(tiny.trained, "a")[0])
    theirs = ScoringModel.from_bytes(export_trained(other.trained, "b")[0])
    holdout = Holdout.from_trained(tiny.trained)
    assert holdout is not None and holdout.is_fraud.any()
    # both sides scored by the same ONNX graph (not the artifact's out-of-sample scores)
    holdout = dataclasses.replace(holdout, candidate_scores=None)
    same = champion_checks(mine, mine, holdout, GateConfig(max_drop_average_precision=0.0,
                                                           max_drop_auc_roc=0.0,
                                                           max_drop_card_precision=0.0))
    assert {c.name for c in same} == {"average_precision_vs_champion", "auc_roc_vs_champion",
                                      "card_precision_at_100_vs_champion"}
    assert all(c.passed for c in same)  # a model is never worse than itself
    vs = {c.name: c for c in champion_checks(mine, theirs, holdout, GateConfig())}
    ap = vs["average_precision_vs_champion"]
    assert ap.value is not None and ap.limit is not None and ap.value != ap.limit + 0.02
    # a champion better by more than the tolerance fails the candidate
    worse = champion_checks(theirs, mine, holdout, GateConfig(max_drop_average_precision=0.0))
    ap_mine, ap_theirs = (next(c for c in checks if c.name == "average_precision_vs_champion")
                          for checks in (worse, [vs["average_precision_vs_champion"]]))
    assert ap_mine.passed == (ap_mine.value >= ap_theirs.value)  # type: ignore[operator]
    # no labels: skipped, and said so
    (skip,) = champion_checks(mine, theirs, None, GateConfig())
    assert skip.passed and "skipped" in skip.note
    (strict,) = champion_checks(mine, theirs, None, GateConfig(require_champion_comparison=True))
    assert not strict.passed


def _snap(start: int, champion: str, shadow: str, agreement: float, fraud_caught: int,
          shadow_caught: int, fraud: int = 10) -> DriftSnapshot:
    return DriftSnapshot(
        window_start=start, window_end=start + DAY, model_version=champion, count=1000,
        labels=LabelFeedback(fraud_declined=fraud_caught, fraud_approved=fraud - fraud_caught,
                             legit_reviewed=1),
        shadow=ShadowSummary(model_version=shadow, count=1000, agreement=agreement,
                             labels=LabelFeedback(fraud_reviewed=shadow_caught,
                                                  fraud_approved=fraud - shadow_caught,
                                                  legit_reviewed=1)))


def test_shadow_evidence_needs_days_agreement_and_label_feedback() -> None:
    cfg = GateConfig(shadow_min_days=3)
    good = [_snap(i * DAY, "champ", "chall", 0.97, 6, 7) for i in range(3)]
    checks = {c.name: c for c in shadow_checks(good, "chall", "champ", cfg)}
    assert all(c.passed for c in checks.values()), checks
    assert checks["shadow_days"].value == 3.0
    assert checks["shadow_label_recall"].value == pytest.approx(21 / 30)
    short = {c.name: c.passed for c in shadow_checks(good[:2], "chall", "champ", cfg)}
    assert short["shadow_days"] is False
    worse = [_snap(i * DAY, "champ", "chall", 0.97, 8, 4) for i in range(3)]
    assert not {c.name: c.passed for c in shadow_checks(worse, "chall", "champ", cfg)}[
        "shadow_label_recall"]
    other = {c.name: c.passed for c in shadow_checks(good, "someone-else", "champ", cfg)}
    assert other["shadow_days"] is False and other["shadow_agreement"] is False


@pytest.fixture
def registry(tiny: Any, other: Any, tmp_path: Path) -> tuple[Path, str, str]:
    """A registry with two real versions: v-a (champion, then) v-b published and promoted."""
    root = tmp_path / "models"
    loose = GateConfig(max_drop_average_precision=1, max_drop_auc_roc=1,
                       max_drop_card_precision=1)
    a = release(tiny.trained, root, version="v-a", gates=loose)
    b = release(other.trained, root, version="v-b", gates=loose)
    assert (a.state, b.state, b.previous_champion) == ("champion", "champion", "v-a")
    return root, "v-a", "v-b"


def test_a_model_below_a_gate_is_rejected_and_current_does_not_move(
    tiny: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    assert export_main(["--model", str(tiny.out), "--models-dir", str(models),
                        "--version", "v-1"]) == 0
    assert os.readlink(models / "current") == "v-1"
    code = export_main(["--model", str(tiny.out), "--models-dir", str(models), "--version",
                        "v-2", "--gate", "min_auc_roc=0.9999"])
    out = capsys.readouterr().out
    assert code == 3
    assert "REJECTED: auc_roc" in out and "models/current unchanged (v-1)" in out
    assert os.readlink(models / "current") == "v-1"
    life = Lifecycle(models)
    rec = life.records()["v-2"]
    assert rec.state == "rejected" and not rec.gates["passed"]  # type: ignore[index]
    assert json.loads((models / "v-2" / "gates.json").read_text())["passed"] is False
    assert (models / "v-2" / "holdout.parquet").is_file()
    # a rejected version is refused by promote unless forced with a reason
    assert cli(["--models-dir", str(models), "promote", "v-2", "--gate",
                "min_auc_roc=0.9999"]) == 1
    assert "not promoting v-2: gates failed: auc_roc" in capsys.readouterr().err
    assert cli(["--models-dir", str(models), "promote", "v-2", "--force",
                "--gate", "min_auc_roc=0.9999"]) == 1
    assert "--force needs --reason" in capsys.readouterr().err
    assert os.readlink(models / "current") == "v-1"
    assert cli(["--models-dir", str(models), "promote", "v-2", "--force", "--reason",
                "incident 42", "--gate", "min_auc_roc=0.9999"]) == 0
    assert os.readlink(models / "current") == "v-2"
    last = life.audit()[-1]
    assert last["action"] == "promote" and last["forced"] is True
    assert last["reason"] == "incident 42" and last["user"] and last["host"]
    assert last["overridden"] and "auc_roc" in last["overridden"][0]


def test_promote_rollback_shadow_and_models_table(
    registry: tuple[Path, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    root, a, b = registry
    life = Lifecycle(root)
    assert life.champion() == b and life.champion_history() == [a, b]
    assert {v: r.state for v, r in life.records().items()} == {a: "retired", b: "champion"}
    args = ["--models-dir", str(root)]
    assert cli([*args, "rollback", "--reason", "bad precision"]) == 0
    assert "rolled back: v-b retired, v-a is champion again" in capsys.readouterr().out
    assert os.readlink(root / "current") == a and load_model(root / "current").version == a
    assert cli([*args, "rollback"]) == 1
    assert "no previous champion to roll back to" in capsys.readouterr().err
    # the rolled-back version rides along as the challenger, then is promoted on evidence
    assert cli([*args, "shadow", b, "--reason", "try again"]) == 0
    assert os.readlink(root / "shadow") == b and life.records()[b].state == "shadow"
    assert cli([*args, "shadow", a]) == 1  # the champion cannot be its own challenger
    capsys.readouterr()
    drift = root.parent / "drift.jsonl"
    drift.write_text("")
    loose = ["--gate", "max_drop_average_precision=1", "--gate", "max_drop_auc_roc=1",
             "--gate", "max_drop_card_precision=1"]
    assert cli([*args, "promote", b, "--drift-file", str(drift), *loose]) == 1
    assert "shadow_days 0.0000 < 7.0000" in capsys.readouterr().err
    import msgspec

    snaps = [_snap(i * DAY, a, b, 0.96, 5, 5) for i in range(2)]
    drift.write_text("\n".join(msgspec.json.encode(s).decode() for s in snaps))
    assert cli([*args, "promote", b, "--drift-file", str(drift), "--shadow-days", "2",
                *loose]) == 0
    out = capsys.readouterr().out
    assert "ok   shadow_days 2.0000 >= 2.0000" in out and "promoted v-b to champion" in out
    assert os.readlink(root / "current") == b and not (root / "shadow").exists()
    assert cli([*args, "models", "--width", "200"]) == 0
    table = capsys.readouterr().out
    for text in ("v-a", "v-b", "retired", "champion", "passed", "champion: v-b",
                 "rollback target: v-a"):
        assert text in table, text
    assert cli([*args, "audit"]) == 0
    actions = [line.split()[2] for line in capsys.readouterr().out.splitlines()]
    assert actions == ["publish", "promote", "publish", "promote", "rollback", "shadow",
                       "promote"]
    with pytest.raises(LifecycleError, match="already the champion"):
        life.promote(b, None)


def test_out_of_sample_candidate_scores_are_used_when_the_artifact_has_them(
    tiny: Any, other: Any
) -> None:
    import dataclasses

    import numpy as np

    from export.model import ScoringModel
    from export.onnx import export_trained

    mine = ScoringModel.from_bytes(export_trained(tiny.trained, "a")[0])
    theirs = ScoringModel.from_bytes(export_trained(other.trained, "b")[0])
    holdout = Holdout.from_trained(tiny.trained)
    # the refit model saw the test rows: the artifact carries the selection model's scores
    assert holdout is not None and holdout.candidate_scores is not None
    useless = dataclasses.replace(holdout, candidate_scores=np.zeros(len(holdout.is_fraud),
                                                                      np.float32))
    checks = {c.name: c for c in champion_checks(mine, theirs, useless, GateConfig())}
    assert checks["auc_roc_vs_champion"].value == 0.5 and not checks["auc_roc_vs_champion"].passed
    table = useless.to_table(mine.feature_names)
    back = Holdout.from_table(table, mine.feature_names)
    assert back.candidate_scores is not None and not back.candidate_scores.any()
