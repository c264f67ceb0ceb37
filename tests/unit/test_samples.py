"""SampleWriter: deterministic sampling by id, atomic Parquet files, flush by rows and by time."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drift.samples import SCHEMA, SampleWriter, sampled
from state.spec import FEATURE_NAMES, N_FEATURES


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def batch(start: int, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed + start)
    scores = rng.random(n).astype(np.float32)
    return {
        "seqs": list(range(start, start + n)),
        "partitions": [2] * n,
        "offsets": list(range(start, start + n)),
        "transaction_ids": [f"txn-{i:06d}" for i in range(start, start + n)],
        "event_times": [1_736_150_400_000 + 1000 * i for i in range(start, start + n)],
        "features": rng.normal(size=(n, N_FEATURES)).astype(np.float32),
        "scores": scores,
        "decisions": np.where(scores > 0.9, "decline", np.where(scores > 0.7, "review", "approve")),
        "model_version": "v1-test",
    }


def files(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def read_all(root: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(root.rglob("*.parquet"))])


def test_sampling_is_the_crc32_of_the_id_below_the_rate() -> None:
    ids = [f"txn-{i}" for i in range(20_000)]
    mask = sampled(ids, 0.1)
    expected = [zlib.crc32(t.encode()) < 0.1 * 2**32 for t in ids]
    assert mask.tolist() == expected
    assert 0.08 < mask.mean() < 0.12
    assert sampled(ids, 1.0).all() and not sampled(ids, 0.0).any()


def test_replay_samples_the_same_rows_with_the_same_file(tmp_path: Path) -> None:
    for run in ("first", "replay"):
        w = SampleWriter(tmp_path, shard=3, rate=0.3)
        w.offer(**batch(100, 500))
        w.flush()
        if run == "first":
            [path] = [p for p in files(tmp_path) if p.is_file()]
            first = pq.read_table(path)
    [again] = [p for p in files(tmp_path) if p.is_file()]
    assert again == path
    assert pq.read_table(again).equals(first)
    ids = first.column("transaction_id").to_pylist()
    assert ids == [t for t in batch(100, 500)["transaction_ids"] if sampled([t], 0.3)[0]]


def test_file_name_is_the_shard_and_sequence_range_and_no_tmp_is_left(tmp_path: Path) -> None:
    w = SampleWriter(tmp_path, shard=7, rate=1.0)
    w.offer(**batch(42, 10))
    w.flush()
    assert [p.relative_to(tmp_path).as_posix() for p in files(tmp_path)] == [
        "shard=7", "shard=7/00000000000000000042-00000000000000000051.parquet"
    ]


def test_rate_zero_writes_nothing(tmp_path: Path) -> None:
    w = SampleWriter(tmp_path, shard=0, rate=0.0, flush_rows=1)
    w.offer(**batch(0, 100))
    w.flush()
    assert files(tmp_path) == []


def test_columns_dtypes_and_values_round_trip(tmp_path: Path) -> None:
    b = batch(0, 50)
    w = SampleWriter(tmp_path, shard=2, rate=1.0)
    w.offer(**b)
    w.flush()
    table = read_all(tmp_path)
    assert table.schema.equals(SCHEMA)
    assert table.column_names[:7] == ["transaction_id", "partition", "offset", "event_time",
                                      "model_version", "score", "decision"]
    assert table.column_names[7:] == list(FEATURE_NAMES)
    assert table.column("transaction_id").to_pylist() == b["transaction_ids"]
    assert table.column("partition").to_pylist() == [2] * 50
    assert table.column("offset").to_pylist() == b["offsets"]
    assert table.column("event_time").to_pylist() == b["event_times"]
    assert set(table.column("model_version").to_pylist()) == {"v1-test"}
    np.testing.assert_array_equal(table.column("score").to_numpy(), b["scores"])
    assert table.column("decision").to_pylist() == b["decisions"].tolist()
    got = np.column_stack([table.column(n).to_numpy() for n in FEATURE_NAMES])
    np.testing.assert_array_equal(got, b["features"])


def test_flush_when_enough_rows_are_buffered(tmp_path: Path) -> None:
    w = SampleWriter(tmp_path, shard=0, rate=1.0, flush_rows=10, flush_seconds=1e9)
    w.offer(**batch(0, 4))
    w.offer(**batch(4, 4))
    assert files(tmp_path) == []
    w.offer(**batch(8, 4))  # 12 rows >= 10: one file with all of them
    assert read_all(tmp_path).num_rows == 12
    w.offer(**batch(12, 4))
    assert read_all(tmp_path).num_rows == 12
    w.flush()
    assert read_all(tmp_path).column("offset").to_pylist() == list(range(16))


def test_flush_when_the_first_buffered_row_is_old_enough(tmp_path: Path) -> None:
    clock = Clock()
    w = SampleWriter(tmp_path, shard=0, rate=1.0, flush_rows=10**6, flush_seconds=30.0,
                     clock=clock)
    w.offer(**batch(0, 3))
    clock.now = 29.0
    w.offer(**batch(3, 3))
    assert files(tmp_path) == []
    clock.now = 30.0
    w.offer(**batch(6, 3))
    assert read_all(tmp_path).num_rows == 9
    clock.now = 100.0  # the clock restarts with the next buffered row, not the last flush
    w.offer(**batch(9, 1))
    assert read_all(tmp_path).num_rows == 9


def test_a_failed_write_drops_the_rows_and_scoring_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    w = SampleWriter(blocker, shard=0, rate=1.0)
    w.offer(**batch(0, 5))
    w.flush()
    assert w.dropped_rows == 5
    w.flush()  # the buffer was cleared
    assert w.dropped_rows == 5


def test_wrong_feature_width_and_rate_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        SampleWriter(tmp_path, shard=0, rate=1.5)
    w = SampleWriter(tmp_path, shard=0, rate=1.0)
    with pytest.raises(ValueError, match=f"features \\[n, {N_FEATURES}\\]"):
        w.offer(**{**batch(0, 2), "features": np.zeros((2, 3), np.float32)})


def test_rows_still_buffered_are_written_when_the_process_exits(tmp_path: Path) -> None:
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from drift.samples import SampleWriter\n"
        "w = SampleWriter(Path(sys.argv[1]), shard=1, rate=1.0)\n"
        "from state.spec import N_FEATURES\n"
        "w.offer([1, 2], [0, 0], [5, 6], ['a', 'b'], [1, 2],\n"
        "        np.ones((2, N_FEATURES), np.float32),\n"
        "        np.array([0.1, 0.9], np.float32), np.array(['approve', 'decline']), 'v')\n"
        "raise KeyboardInterrupt  # like the flow on SIGINT: no explicit flush\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          cwd=Path(__file__).parents[2])
    assert done.returncode != 0
    assert read_all(tmp_path).column("transaction_id").to_pylist() == ["a", "b"]


def test_rows_still_buffered_are_written_when_the_writer_is_dropped(tmp_path: Path) -> None:
    w = SampleWriter(tmp_path, shard=0, rate=1.0)
    w.offer(**batch(0, 3))
    assert files(tmp_path) == []
    del w
    assert read_all(tmp_path).num_rows == 3
