from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from training.history import from_frame, load_history, write_history
from training.simulate import SCENARIOS, SimConfig, main, simulate

CFG = SimConfig(n_transactions=6_000, n_cards=200, days=20, seed=3, fraud_rate=0.03)


def test_deterministic_for_a_seed() -> None:
    a, b = simulate(CFG), simulate(CFG)
    pd.testing.assert_frame_equal(a, b)
    c = simulate(SimConfig(**{**CFG.__dict__, "seed": 4}))
    assert not a["amount"].equals(c["amount"])


def test_scenarios_labels_and_contract(tmp_path: Path) -> None:
    h = simulate(CFG)
    assert set(h["scenario"].dropna().unique()) == set(SCENARIOS)
    fraud = h["scenario"].notna().to_numpy()
    # labels never precede the transaction; labelled fraud is a subset of true fraud
    assert (h["label_time"] >= h["event_time"]).all()
    assert not (h["is_fraud"].to_numpy() & ~fraud).any()
    assert 0.02 < fraud.mean() < 0.045
    assert h["event_time"].is_monotonic_increasing
    assert h["transaction_id"].is_unique
    # card testing: tiny amounts then one large one, within minutes
    ct = h[h["scenario"] == "card_testing"]
    assert (ct["amount"] < 5 * 38).mean() > 0.6 and ct["channel"].isin(["ecom", "moto"]).all()
    # impossible travel is card present
    assert h.loc[h["scenario"] == "impossible_travel", "lat"].notna().all()
    # every row passes the transactions contract (through the validating loader)
    path = tmp_path / "h.parquet"
    write_history(h, path)
    loaded = load_history(path)
    assert len(loaded) == len(h)
    assert np.array_equal(loaded.is_fraud, h["is_fraud"].to_numpy())
    assert loaded.scenario == from_frame(h).scenario


def test_cli_writes_parquet(tmp_path: Path, capsys: object) -> None:
    out = tmp_path / "sim.parquet"
    assert main(["-n", "3000", "--days", "10", "--seed", "1", "--out", str(out)]) == 0
    df = pd.read_parquet(out)
    assert len(df) >= 2900 and {"scenario", "is_fraud", "label_time"} <= set(df.columns)
