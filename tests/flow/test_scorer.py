"""The per-partition scorer over real RocksDB and a real exported ONNX model."""

import random
from pathlib import Path

import msgspec
import numpy as np
import pytest
from prometheus_client import REGISTRY

from export.model import load_model
from export.reasons import COMBINED
from flows.decode import Sourced
from flows.scorer import PartitionScorer
from flows.serving import ModelSource
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


def _source(path: Path, **kwargs: object) -> ModelSource:
    kwargs.setdefault("thresholds", lambda m: m.thresholds)
    kwargs.setdefault("interval", 0)
    return ModelSource(path, **kwargs)  # type: ignore[arg-type]


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
        scorer = PartitionScorer(PartitionStore.open(tmp_path, p), _source(tiny_model_dir))
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
    part = [e for e in _partitioned(stream)[0] if isinstance(e, Sourced)][:2_000]
    clock = iter(range(10**6))
    scorer = PartitionScorer(PartitionStore.open(tmp_path, 0), _source(tiny_model_dir),
                             clock=lambda: float(next(clock)))
    first = scorer.score(part[:1_200])
    # Crash: drop every object, keep the directory; resume from an earlier offset.
    del scorer
    scorer = PartitionScorer(PartitionStore.open(tmp_path, 0), _source(tiny_model_dir),
                             clock=lambda: float(next(clock)))
    replayed = REGISTRY.get_sample_value("fraud_replayed_verdicts_total") or 0.0
    again = scorer.score(part[700:])
    assert [v.value for v in again[:500]] == [v.value for v in first[700:]]
    assert REGISTRY.get_sample_value("fraud_replayed_verdicts_total") == replayed + 500
    assert len(part) > 1_300 and len({v.key for v in first + again}) == len(part)


def test_threshold_override_changes_decisions_not_scores(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from export.metadata import Thresholds

    part = [e for e in _partitioned(stream)[1] if isinstance(e, Sourced)][:500]
    strict = PartitionScorer(
        PartitionStore.open(tmp_path / "a", 1),
        _source(tiny_model_dir, thresholds=lambda m: Thresholds(review=0.0, decline=1.0)),
    )
    default = PartitionScorer(PartitionStore.open(tmp_path / "b", 1), _source(tiny_model_dir))
    a, b = _decode(strict.score(part)), _decode(default.score(part))
    assert [x.score for x in a] == [y.score for y in b]
    assert {x.decision for x in a} == {"review"}


def _publish(registry_dir: Path, source_dir: Path, version: str, **props: str) -> Path:
    """Copy a published model under a new version, with metadata properties replaced."""
    import onnx

    proto = onnx.load(str(source_dir / "model.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "fraudstream.model_version":
            prop.value = version
        if prop.key.removeprefix("fraudstream.") in props:
            prop.value = props[prop.key.removeprefix("fraudstream.")]
    target = registry_dir / version
    target.mkdir(parents=True)
    onnx.save(proto, str(target / "model.onnx"))
    return target


def _point_current(registry_dir: Path, target: Path) -> None:
    link = registry_dir / "current"
    tmp = registry_dir / ".current.tmp"
    tmp.symlink_to(target)
    tmp.replace(link)  # atomic, as `just export-onnx` does


def test_hot_reload_swaps_between_batches_and_refuses_bad_models(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from flows import metrics

    registry = tmp_path / "models"
    first = _publish(registry, tiny_model_dir, "v-first")
    _point_current(registry, first)
    now = [0.0]
    source = _source(registry / "current", interval=5, clock=lambda: now[0])
    scorer = PartitionScorer(PartitionStore.open(tmp_path / "state", 2), source)
    part = [e for e in _partitioned(stream)[2] if isinstance(e, Sourced)][:900]
    refused = metrics.MODEL_RELOADS.labels(role="champion", outcome="refused")
    refused_before = refused._value.get()

    verdicts = _decode(scorer.score(part[:300]))
    # A corrupt file and a model of another feature spec are refused; v-first keeps serving.
    corrupt = registry / "v-corrupt"
    corrupt.mkdir()
    (corrupt / "model.onnx").write_bytes(b"not an onnx model")
    _point_current(registry, corrupt)
    now[0] += 6
    verdicts += _decode(scorer.score(part[300:400]))
    _point_current(registry, _publish(registry, tiny_model_dir, "v-old-spec",
                                      feature_spec_version="v0"))
    now[0] += 6
    verdicts += _decode(scorer.score(part[400:500]))
    assert refused._value.get() - refused_before == 2
    # A good model is picked up between batches, not before its interval has passed.
    _point_current(registry, _publish(registry, tiny_model_dir, "v-second"))
    verdicts += _decode(scorer.score(part[500:600]))
    now[0] += 6
    verdicts += _decode(scorer.score(part[600:]))

    versions = [v.model_version for v in verdicts]
    assert versions == ["v-first"] * 600 + ["v-second"] * 300
    assert [v.transaction_id for v in verdicts] == [s.value.transaction_id for s in part]


def test_shadow_rides_along_and_never_changes_the_decision(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from export.metadata import Thresholds

    part = [e for e in _partitioned(stream)[3] if isinstance(e, Sourced)][:600]
    shadow = _source(tiny_model_dir, thresholds=lambda m: Thresholds(review=0.0, decline=0.0),
                     role="shadow")
    with_shadow = _decode(PartitionScorer(
        PartitionStore.open(tmp_path / "a", 3), _source(tiny_model_dir), shadow).score(part))
    alone = _decode(PartitionScorer(
        PartitionStore.open(tmp_path / "b", 3), _source(tiny_model_dir)).score(part))
    assert [(v.score, v.decision) for v in with_shadow] == [(v.score, v.decision) for v in alone]
    assert all(v.shadow_decision == "decline" and v.shadow_score == v.score for v in with_shadow)
    assert {v.shadow_model_version for v in with_shadow} == {shadow.current.version}
    assert all(v.shadow_score is None for v in alone)


def test_replayed_offsets_without_a_stored_verdict_are_skipped_not_fatal(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    part = [e for e in _partitioned(stream)[0] if isinstance(e, Sourced)][:50]
    scorer = PartitionScorer(PartitionStore.open(tmp_path, 0), _source(tiny_model_dir))
    # Offset 3 was dead-lettered the first time: the store never saw it.
    first = scorer.score([s for s in part if s.offset != 3])
    assert len(first) == 49
    # A restart without recovery replays everything, offset 3 included (now "valid").
    skipped = REGISTRY.get_sample_value("fraud_replay_skipped_total") or 0.0
    again = scorer.score(part)
    assert [v.value for v in again] == [v.value for v in first]
    assert REGISTRY.get_sample_value("fraud_replay_skipped_total") == skipped + 1


def test_a_label_read_before_its_verdict_still_joins_it(
    stream: list[Transaction | Label], tiny_model_dir: Path, tmp_path: Path
) -> None:
    part = [e for e in _partitioned(stream)[1] if isinstance(e, Sourced)][:300]
    scorer = PartitionScorer(PartitionStore.open(tmp_path, 1), _source(tiny_model_dir))
    version = scorer.champion.current.version

    def feedback() -> float:
        return sum(REGISTRY.get_sample_value("fraud_label_feedback_total", {
            "model_version": version, "decision": d, "truth": "fraud"}) or 0.0
            for d in ("approve", "review", "decline"))

    def label(s: Sourced[Transaction]) -> Label:
        txn = s.value
        return Label(transaction_id=txn.transaction_id, card_id=txn.card_id,
                     merchant_id=txn.merchant_id, is_fraud=True, label_time=txn.event_time)

    joined, unknown = feedback(), REGISTRY.get_sample_value("fraud_labels_unknown_total") or 0
    # labels for the last 100 transactions arrive first (a backlog on the transactions topic)
    scorer.apply_labels([label(s) for s in part[200:]])
    scorer.join_labels()
    scorer.score(part[:200])
    scorer.join_labels()
    assert feedback() == joined  # their transactions' time has not come: still waiting
    scorer.score(part[200:])
    scorer.join_labels()
    assert feedback() == joined + 100
    assert REGISTRY.get_sample_value("fraud_labels_unknown_total") == unknown
