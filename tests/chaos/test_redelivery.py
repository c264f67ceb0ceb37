"""Re-deliveries at scale: 100,000 transactions, 2% delivered twice (issue 13, acceptance).

A simulated stream goes through ``devkit.produce.with_duplicates``: 2% of the
transactions are re-delivered byte for byte, some at once (a producer retry), some
once the stream has reached a simulated day later (a replayed batch). The real flow
scores it on the embedded broker. Every transaction id must get exactly one verdict
body, however many copies were published, and every score must equal offline replay of
the de-duplicated stream (in the order the merchant stage scored it); the flow counts
each re-delivery in ``fraud_duplicate_transactions_total{kind="redelivery"}``.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest
from chaos.chaoskit import produce, settle, start

from devkit.produce import with_duplicates
from flowkit import Collector, flow_env, metric, offline_scores, scrape, topic_set
from tiny_model import tiny_history
from topics.settings import KafkaSettings
from training.simulate import SimConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = SimConfig(n_transactions=100_000, n_cards=2_000, days=20, seed=13, fraud_rate=0.02)
SHARE = 0.02
TIMEOUT = 600


def test_two_percent_re_delivered_give_one_verdict_body_each_and_the_scores_of_the_clean_stream(
    kafka: KafkaSettings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    txns = list(tiny_history(WORLD).transactions)
    redelivered = with_duplicates(txns, SHARE, seed=13)
    stream = list(redelivered)
    copies = redelivered.immediate + redelivered.delayed
    assert len(stream) == len(txns) + copies
    assert redelivered.immediate > 0 and redelivered.delayed > 0
    assert copies >= SHARE * len(txns) * 0.8

    settings = topic_set(kafka, "redelivery")
    produce(settings, stream)
    collector = Collector(settings)
    collector.start()
    flow, port = start(flow_env(settings, tiny_model_dir, tmp_path, FRAUD_SAMPLE_RATE="0"),
                       tmp_path)
    try:
        deadline = time.time() + TIMEOUT
        ids = {t.transaction_id for t in txns}
        while len(collector.outcome.verdicts) < len(ids):
            flow.check()
            assert time.time() < deadline, f"{len(collector.outcome.verdicts)} verdicts"
            time.sleep(0.2)
        seen = settle(collector)
        counted = metric(scrape(port), "fraud_duplicate_transactions_total", kind="redelivery")
        flow.stop(timeout=30)
    finally:
        collector.stop()

    verdicts = collector.outcome.verdicts
    assert set(verdicts) == ids
    bodies = {t: {msgspec.json.encode(v) for v in vs} for t, vs in verdicts.items()}
    assert all(len(b) == 1 for b in bodies.values()), "a re-delivery changed a verdict body"
    assert sum(seen.values()) == len(stream)  # one verdict published per copy read
    assert counted == copies
    (offline,) = offline_scores(txns, [tiny_model_dir]).values()
    off = {t: (vs[0].score, offline[t]) for t, vs in verdicts.items()
           if abs(vs[0].score - offline[t]) > 1e-6}
    assert not off, f"{len(off)} scores differ from replay of the clean stream: {list(off)[:5]}"
    print(f"\n{len(txns):,} transactions, {copies:,} re-delivered ({redelivered.immediate:,} at "
          f"once, {redelivered.delayed:,} a day later): one verdict body each, scores equal to "
          "replay of the clean stream")
