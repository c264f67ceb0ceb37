"""The per-partition scorer over real RocksDB and a real exported ONNX model."""

import random
from pathlib import Path

import msgspec
import numpy as np
import pytest

from export.model import load_model
from export.reasons import COMBINED
from flows.decode import Sourced
from flows.scorer import PartitionScorer
from state.partitioning import murmur2_partition
from state.replay import replay_matrix
from state.store import PartitionStore
from tiny_model import tiny_history
from topics.contracts import Label, Prediction, Transaction
from training.history import events
from training.simulate import SimConfig

PARTS = 4
WORLD = SimConfig(n_transactions=6_000, n_cards=150, days=20, seed=23, fraud_rate=0.05)


def _partitioned(evts: list[Transaction | Label]) -> dict[int, list[Sourced[Transaction] | Label]]:
    """Events per partition in stream order, transactions with their partition offsets."""
    out: dict[int, list[Sourced[Transaction] | Label]] = {p: [] for p in range(PARTS)}
    offsets = [0] * PARTS
    for event in evts:
        p = murmur2_partition(event.card_id, PARTS)
        if isinstance(event, Transaction):
            out[p].append(Sourced(event, p, offsets[p], event.event_time))
            offsets[p] += 1
        else:
            out[p].append(event)
    return out


def _run(scorer: PartitionScorer, stream: list[Sourced[Transaction] | Label],
         rng: random.Random) -> list[Prediction]:
    """Feed a partition's stream in random batch sizes (labels applied where they occur)."""
    verdicts: list[Prediction] = []
    i = 0
    while i < len(stream):
        chunk = stream[i:i + rng.randint(1, 300)]
        i += len(chunk)
        txns: list[Sourced[Transaction]] = []
        for item in chunk:
            if isinstance(item, Label):
                verdicts += _decode(scorer.score(txns))
                txns = []
                scorer.apply_labels([item])
            else:
                txns.append(item)
        verdicts += _decode(scorer.score(txns))
    return verdicts


def _decode(verdicts: list) -> list[Prediction]:
    return [msgspec.json.decode(v.value, type=Prediction) for v in verdicts]


@pytest.fixture(scope="module")
def stream() -> list[Transaction | Label]:
    return list(events(tiny_history(WORLD)))


def test_stream_verdicts_equal_offline_replay_through_the_same_onnx(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = load_model(tiny_model_dir)
    txns, X = replay_matrix(stream, n_partitions=PARTS)
    offline = dict(zip((t.transaction_id for t in txns), model.predict(X).tolist(), strict=True))

    rng = random.Random(1)
    verdicts: list[Prediction] = []
    for p, part_stream in _partitioned(stream).items():
        scorer = PartitionScorer(PartitionStore.open(tmp_path, p), model)
        verdicts += _run(scorer, part_stream, rng)

    assert len(verdicts) == len(offline) == len({v.transaction_id for v in verdicts})
    diffs = [abs(v.score - offline[v.transaction_id]) for v in verdicts]
    assert max(diffs) <= 1e-6
    expected = model.decide(np.array([v.score for v in verdicts], dtype=np.float32))
    assert [v.decision for v in verdicts] == expected.tolist()
    flagged = [v for v in verdicts if v.decision != "approve"]
    assert flagged, "the tiny model should flag some of a 5%-fraud world"
    assert all(v.reasons for v in flagged) and not any(
        v.reasons for v in verdicts if v.decision == "approve")
    names = {*model.feature_names, COMBINED.feature}
    assert all(r.feature in names and r.text for v in flagged for r in v.reasons)
    assert sum(v.reasons == [COMBINED] for v in flagged) < len(flagged) / 10
    assert {v.model_version for v in verdicts} == {model.version}


def test_replayed_offsets_re_emit_the_first_verdict_bytes(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = load_model(tiny_model_dir)
    part = [e for e in _partitioned(stream)[0] if isinstance(e, Sourced)][:2_000]
    clock = iter(range(10**6))
    scorer = PartitionScorer(PartitionStore.open(tmp_path, 0), model,
                             clock=lambda: float(next(clock)))
    first = scorer.score(part[:1_200])
    # Crash: drop every object, keep the directory; resume from an earlier offset.
    del scorer
    scorer = PartitionScorer(PartitionStore.open(tmp_path, 0), model,
                             clock=lambda: float(next(clock)))
    again = scorer.score(part[700:])
    assert [v.value for v in again[:500]] == [v.value for v in first[700:]]
    assert all(v.replayed for v in again[:500]) and not any(v.replayed for v in again[500:])
    assert len(part) > 1_300 and len({v.key for v in first + again}) == len(part)


def test_threshold_override_changes_decisions_not_scores(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from export.metadata import Thresholds

    model = load_model(tiny_model_dir)
    part = [e for e in _partitioned(stream)[1] if isinstance(e, Sourced)][:500]
    strict = PartitionScorer(PartitionStore.open(tmp_path / "a", 1), model,
                             Thresholds(review=0.0, decline=1.0))
    default = PartitionScorer(PartitionStore.open(tmp_path / "b", 1), model)
    a, b = _decode(strict.score(part)), _decode(default.score(part))
    assert [x.score for x in a] == [y.score for y in b]
    assert {x.decision for x in a} == {"review"}
