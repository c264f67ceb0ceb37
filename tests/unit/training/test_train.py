"""Training protocols with real (small) XGBoost + RandomForest models on hand-made features."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from export.metadata import Thresholds
from training.artifact import TrainedModel
from training.train import (
    DAY_MS,
    TrainConfig,
    TrainingError,
    choose_thresholds,
    main,
    prequential_blocks,
    recalibrate,
    time_split,
    train_on_features,
    undersample,
)

SPEC = ("test-spec", ("noise", "old_signal", "new_signal"))
CONTEXT = {"feature_spec_version": "test-spec", "reference_currency": "EUR"}
SMALL = TrainConfig(
    xgb_estimators=25, xgb_depth=3, rf_estimators=12, rf_depth=5, label_delay_days=2,
    strategies=("weight",), xgb_grid=({"learning_rate": 0.3},), xgb_weights=(0.5,),
    review_per_day=5, n_jobs=1, val_days=6, test_days=12, min_decline_support=2,
)


def _world(seed: int = 0, n: int = 8000, days: int = 40) -> dict[str, np.ndarray]:
    """Fraud with ``old_signal`` throughout; a new pattern (``new_signal``) after day 26.

    Validation ends on day 26 (40 days, 12 test days, 2-day gap), so only rows after
    the validation split show the new pattern: a model that learns it saw them.
    """
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, days * DAY_MS, n)).astype(np.int64) + 1_736_000_000_000
    day = (t - t[0]) / DAY_MS
    fraud = rng.random(n) < 0.04
    new = fraud & (day >= 26) & (rng.random(n) < 0.6)
    X = np.column_stack([
        rng.normal(size=n),
        np.where(fraud & ~new, rng.normal(3, 1, n), rng.normal(0, 1, n)),
        np.where(new, rng.normal(4, 0.5, n), rng.normal(0, 1, n)),
    ]).astype(np.float32)
    label_time = t + rng.integers(0, 2 * DAY_MS, n)
    scenario = np.full(n, None, dtype=object)
    scenario[fraud] = "old_pattern"
    scenario[new] = "new_pattern"
    cards = np.array([f"c{i}" for i in rng.integers(0, 300, n)], dtype=object)
    return {"X": X, "is_fraud": fraud, "label_time": label_time, "event_time": t,
            "card_id": cards, "scenario": scenario}


def _train(out: Path, cfg: TrainConfig, world: dict[str, np.ndarray]) -> TrainedModel:
    return train_on_features(
        world["X"], world["is_fraud"], world["label_time"], world["event_time"],
        world["card_id"], list(world["scenario"]), SPEC, out, cfg,
        feature_context=CONTEXT, timings={"load": 0.5, "features": 1.5},
    )


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    return _world()


@pytest.fixture(scope="module")
def refitted(world: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[TrainedModel, Path]:
    out = tmp_path_factory.mktemp("refit")
    return _train(out, replace(SMALL, protocol="prequential", blocks=3), world), out


def test_time_split_leaves_label_delay_gaps() -> None:
    t = np.arange(0, 100 * DAY_MS, DAY_MS // 4, dtype=np.int64)
    cfg = TrainConfig(label_delay_days=7)
    s = time_split(t, cfg)
    assert t[s.train].max() < s.bounds["train_end"]
    assert s.bounds["val_start"] - s.bounds["train_end"] == 7 * DAY_MS
    assert s.bounds["test_start"] - s.bounds["val_end"] == 7 * DAY_MS
    assert t[s.train].max() + 7 * DAY_MS <= t[s.val].min() + DAY_MS // 4
    assert set(s.train).isdisjoint(s.val) and set(s.val).isdisjoint(s.test)
    with pytest.raises(TrainingError, match="too short"):
        time_split(np.arange(0, 10 * DAY_MS, DAY_MS, dtype=np.int64), cfg)


def test_split_lengths_in_days_or_from_a_train_share() -> None:
    t = np.arange(0, 100 * DAY_MS, DAY_MS // 4, dtype=np.int64)
    b = time_split(t, TrainConfig(label_delay_days=7, val_days=10, test_days=15)).bounds
    assert (b["end"] - b["test_start"], b["val_end"] - b["val_start"]) == (15 * DAY_MS,
                                                                           10 * DAY_MS)
    b = time_split(t, TrainConfig(label_delay_days=7, train_share=0.5)).bounds
    assert b["train_end"] - b["start"] == pytest.approx(50 * DAY_MS, abs=DAY_MS // 4)
    # (100 - 50 - 2 * 7) / 2 days, the span being 100 days less the last 6 h
    assert b["end"] - b["test_start"] == pytest.approx(17.9375 * DAY_MS, abs=1)
    b = time_split(t, TrainConfig(label_delay_days=7, train_share=0.5, test_days=6)).bounds
    assert b["val_end"] - b["val_start"] == pytest.approx(29.875 * DAY_MS, abs=1)
    with pytest.raises(TrainingError, match="at most two"):
        time_split(t, TrainConfig(train_share=0.5, val_days=5, test_days=5))
    with pytest.raises(TrainingError, match="smaller --train-share"):
        time_split(t, TrainConfig(label_delay_days=7, train_share=0.9))


def test_prequential_blocks_never_train_on_their_block_or_later() -> None:
    rng = np.random.default_rng(3)
    t = np.sort(rng.integers(0, 90 * DAY_MS, 20_000)).astype(np.int64)
    for blocks, delay in ((1, 7.0), (4, 7.0), (6, 2.5), (3, 0.0)):
        cfg = TrainConfig(label_delay_days=delay, blocks=blocks)
        split = time_split(t, cfg)
        out = prequential_blocks(t, split, cfg)
        assert len(out) == blocks
        assert np.array_equal(np.concatenate([b.test for b in out]), split.test)  # a partition
        for b in out:
            assert t[b.train].max() < b.start - delay * DAY_MS <= b.start
            assert b.train_end == b.start - int(delay * DAY_MS)
            assert set(b.train).isdisjoint(b.test) and set(b.calib).isdisjoint(b.test)
            assert t[b.test].min() >= b.start and t[b.test].max() < b.end
            if b.calib.size:
                assert t[b.calib].min() >= b.train_end and t[b.calib].max() < b.start
            # everything before the calibration window is trained on
            assert b.train.size == int((t < b.train_end).sum())


def test_thresholds_follow_the_policy_and_sit_between_scores() -> None:
    rng = np.random.default_rng(0)
    y = np.zeros(10_000, dtype=bool)
    y[:100] = True
    scores = np.where(y, rng.uniform(0.5, 1.0, y.size), rng.uniform(0.0, 0.8, y.size))
    cfg = TrainConfig(decline_precision=0.9, review_per_day=30)
    th, info = choose_thresholds(scores, y, days=10, cfg=cfg)
    declined = scores >= th.decline
    assert y[declined].mean() >= 0.9 and declined.sum() >= cfg.min_decline_support
    band = (scores >= th.review) & ~declined
    assert band.sum() <= 30 * 10
    assert band.sum() >= 30 * 10 - 1
    assert not np.isin([th.review, th.decline], scores).any()  # never equal to a score


def test_recalibration_matches_decline_volume_and_caps_the_review_band() -> None:
    rng = np.random.default_rng(1)
    sel = rng.uniform(0, 1, 7000)
    new = np.clip(sel * 0.7 + rng.normal(0, 0.05, sel.size), 0, 1)  # another scale, same rank-ish
    validated = Thresholds(review=0.9, decline=0.99)  # band of ~630 on the selection model
    cfg = TrainConfig(review_per_day=20, min_decline_support=5)
    th, info = recalibrate(validated, sel, new, window_days=7, cfg=cfg)
    assert (new >= th.decline).sum() == (sel >= validated.decline).sum() == info[
        "selection_declines"]
    band = ((new >= th.review) & (new < th.decline)).sum()
    assert band == 20 * 7  # capped at capacity (the selection band is larger)
    assert th.decline < validated.decline  # the new model's scores are lower: thresholds follow
    assert not np.isin([th.review, th.decline], new).any()
    # too few declines on the window to rank-match: the validated value stays
    th2, info2 = recalibrate(Thresholds(0.9, 0.99995), sel, new, 7, cfg)
    assert th2.decline == 0.99995 and info2["method"] == "decline_kept"
    assert ((new >= th2.review) & (new < th2.decline)).sum() <= 20 * 7
    # no window (label delay 0): kept as validated
    th3, info3 = recalibrate(validated, np.empty(0), np.empty(0), 0, cfg)
    assert (th3.review, th3.decline, info3["method"]) == (0.9, 0.99, "kept")


def test_undersample_keeps_all_positives() -> None:
    y = np.zeros(1000, dtype=bool)
    y[::100] = True
    rows = undersample(y, 5, seed=1)
    assert y[rows].sum() == 10 and rows.size == 60 and np.all(np.diff(rows) > 0)


def test_refit_learns_from_rows_after_the_validation_split(
    world: dict[str, np.ndarray], refitted: tuple[TrainedModel, Path], tmp_path: Path
) -> None:
    model, _ = refitted
    frozen = _train(tmp_path, replace(SMALL, refit=False), world)
    t = world["event_time"]
    split = time_split(t, SMALL)
    refit = model.metrics["refit"]
    end_fit = split.bounds["end"] - 2 * DAY_MS
    assert refit["enabled"] and refit["rows"] == int((t < end_fit).sum())
    assert refit["rows_after_validation"] == int(((t >= split.bounds["val_end"])
                                                  & (t < end_fit)).sum()) > 0
    probe = np.array([[0.0, 0.0, 4.0]], dtype=np.float32)  # the pattern seen only after day 26
    p_refit = float(model.ensemble.predict_proba(probe)[0, 1])
    p_frozen = float(frozen.ensemble.predict_proba(probe)[0, 1])
    assert p_refit > 0.5 > 0.2 > p_frozen
    assert frozen.metrics["refit"] == {"enabled": False,
                                       "threshold_method": frozen.thresholds.policy}
    # --no-refit serves the selection model: same thresholds as validated, same scores
    assert frozen.thresholds.to_dict() == {
        k: frozen.metrics["selection_thresholds"][k] for k in ("review", "decline", "policy")}
    # holdout rows for the champion check: test-period rows with their labels, times and
    # cards; the refitted model saw them, so it hands over the selection model's scores
    assert model.holdout_event_time is not None and model.holdout_labels is not None
    assert model.holdout_card_id is not None
    idx = np.searchsorted(t, model.holdout_event_time)
    assert t[idx].min() >= split.bounds["test_start"]
    assert np.array_equal(model.holdout_features, world["X"][idx])
    assert np.array_equal(model.holdout_labels, world["is_fraud"][idx])
    # cards as pseudonyms (export.pseudonym): rows share a ref iff they share a card, and
    # no card id is kept in the artifact
    cards, refs = world["card_id"][idx], model.holdout_card_id
    assert not set(map(str, world["card_id"])) & set(refs)
    _, card_groups = np.unique(cards.astype(str), return_inverse=True)
    _, ref_groups = np.unique(refs.astype(str), return_inverse=True)
    first_ref = {}
    for c, r in zip(card_groups.tolist(), ref_groups.tolist(), strict=True):
        assert first_ref.setdefault(c, r) == r
    assert len(set(first_ref.values())) == len(first_ref)
    assert model.holdout_scores is not None and frozen.holdout_scores is None
    np.testing.assert_allclose(
        model.holdout_scores, frozen.ensemble.predict_proba(model.holdout_features)[:, 1],
        atol=1e-6)


def test_refit_thresholds_hold_review_capacity_on_the_unseen_window(
    world: dict[str, np.ndarray], refitted: tuple[TrainedModel, Path]
) -> None:
    model, _ = refitted
    t = world["event_time"]
    window = t >= t.max() + 1 - 2 * DAY_MS
    s = model.ensemble.predict_proba(world["X"][window])[:, 1]
    band = ((s >= model.thresholds.review) & (s < model.thresholds.decline)).sum()
    assert band <= SMALL.review_per_day * 2
    w = model.metrics["refit"]["window"]
    assert w["refit_band_per_day"] == pytest.approx(band / 2)
    assert "rank-matched" in model.thresholds.policy or "kept" in model.thresholds.policy


def test_prequential_report_per_block_and_pooled(
    world: dict[str, np.ndarray], refitted: tuple[TrainedModel, Path]
) -> None:
    model, out = refitted
    pq = model.metrics["prequential"]
    assert [b["index"] for b in pq["blocks"]] == [1, 2, 3]
    for b in pq["blocks"]:
        assert b["train_last_event_utc"] <= b["train_end_utc"] < b["start_utc"]  # minutes
        assert b["metrics"]["rows"] == b["test_rows"] > 0
        assert b["thresholds"]["review"] <= b["thresholds"]["decline"]
    assert pq["pooled"]["rows"] == model.metrics["data"]["test_rows"]
    assert sum(b["train_rows"] for b in pq["blocks"][:1]) < pq["blocks"][-1]["train_rows"]
    assert {"new_pattern", "old_pattern"} <= set(pq["pooled"]["scenario_recall"])
    text = (out / "report.md").read_text()
    for heading in ("## Where each figure comes from", "## Holdout test: selection model",
                    "## Prequential: 3 successive blocks", "not evaluated on data it saw",
                    "detected cards removed", "## Training time"):
        assert heading in text, heading
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["protocols"]) == {"validation", "test", "prequential", "refit"}
    assert metrics["protocols"]["refit"]["protocol"] == "none: not evaluated on data it saw"
    timings = metrics["timings_s"]
    assert {"load", "features", "selection", "prequential", "refit", "report", "total"} <= set(
        timings)
    assert timings["total"] == pytest.approx(sum(v for k, v in timings.items() if k != "total"))
    ens = metrics["test"]["ensemble"]
    assert 0 <= ens["card_precision_at_100_excl_detected"] <= ens["card_precision_ceiling"]
    assert metrics["feature_context"] == CONTEXT


def test_feature_context_is_recorded_and_old_artifacts_still_load(
    refitted: tuple[TrainedModel, Path], tmp_path: Path
) -> None:
    model, out = refitted
    assert TrainedModel.load(out).feature_context == CONTEXT
    old = TrainedModel.load(out)
    del old.__dict__["feature_context"]  # as pickled before the field existed
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(old))
    assert TrainedModel.load(tmp_path).feature_context == {}


def test_cli_help_names_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data", "--out", "--protocol", "--blocks", "--train-share",
                   "--validation-days", "--test-days", "--no-refit", "--skip-invalid",
                   "--label-delay-days", "--review-per-day", "--decline-precision", "--quick"):
        assert option in text, option


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "no/such/file.parquet"], "no such file; simulate one"),
    (["--data", "x.csv", "--train-share", "1.5"], "must be a share between 0 and 1"),
    (["--data", "x.csv", "--blocks", "0"], "must be > 0"),
    (["--data", "x.csv", "--train-share", "0.5", "--validation-days", "3", "--test-days", "3"],
     "at most two"),
])
def test_cli_refuses_bad_input_with_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_cli_names_the_bad_rows_and_the_remedy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "h.csv"
    csv.write_text("transaction_id,card_id,merchant_id,amount,currency,event_time,is_fraud\n"
                   "t1,c1,m1,-5,EUR,1736150400000,no\n"
                   "t2,c1,m1,5,EUR,1736150400000,perhaps\n")
    assert main(["--data", str(csv), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"error: {csv}: 2 problems, first line 2: amount: ")
    assert "--skip-invalid" in err[0]
    assert err[1:] == [err[1], "  line 3: is_fraud: 'perhaps' is not a boolean (true/false, "
                               "1/0, yes/no)"]


def test_cli_trains_a_dirty_history_end_to_end_with_skip_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    from tiny_model import TINY_WORLD
    from training.history import write_history
    from training.simulate import simulate

    df = simulate(TINY_WORLD)
    conflict = df.iloc[[1]].assign(amount=df["amount"].iloc[1] + 1.0)
    negative = df.iloc[[2]].assign(transaction_id="bad-1", amount=-4.0)
    dirty = pd.concat([df, df.iloc[[0]], conflict, negative], ignore_index=True)
    csv = tmp_path / "dirty.csv"
    write_history(dirty, csv)
    base = ["--data", str(csv), "--quick", "--xgb-estimators", "15", "--rf-estimators", "8",
            "--label-delay-days", "3", "--review-per-day", "20", "--jobs", "1"]
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main([*base, "--out", str(tmp_path / "refused")]) == 2
    assert "OMP_WAIT_POLICY" not in os.environ  # set for the run only
    assert "--skip-invalid" in capsys.readouterr().err.splitlines()[0]
    out = tmp_path / "run"
    assert main([*base, "--out", str(out), "--skip-invalid"]) == 0
    assert (out / "handover" / "handover.json").is_file()  # what `just export-onnx` reads
    metrics = json.loads((out / "metrics.json").read_text())
    hygiene = metrics["history"]
    assert hygiene["rows_read"] == len(df) + 3 and hygiene["rows_kept"] == len(df)
    assert hygiene["duplicates_dropped"] == 1
    assert hygiene["skipped_by_rule"] == {"transaction_id: duplicate_conflict": 1,
                                          "amount: invalid_value": 1}
    report = (out / "report.md").read_text()
    assert "## History hygiene" in report and "1 exact repeats" in report
    assert f"line {len(df) + 4}: amount: expected `float` >" in report
    assert metrics["refit"]["enabled"] and metrics["data"]["rows"] == len(df)
