"""Look into a stopped flow's state directory: stores, identities, processing order.

``python -m state.inspect STATE_DIR`` prints each store's identity, sequence
number and approximate size. :func:`merchant_order` gives the order in which the
merchant stage scored transactions, so an offline replay can reproduce a live
run exactly (:func:`state.replay.replay_matrix` with ``merchant_order``).

Open only a stopped flow's directory: RocksDB allows one writer per store.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import rocksdict

from state import keys
from state.options import StoreOptions
from state.records import LabelMark, Verdict


def stores(state_dir: Path) -> Iterator[tuple[str, int, Path]]:
    """``(role, shard, path)`` of every store under ``state_dir``, sorted."""
    for role in ("cards", "merchants"):
        root = Path(state_dir) / role
        if root.is_dir():
            for path in sorted(root.iterdir(), key=lambda p: int(p.name)):
                yield role, int(path.name), path


def _open(path: Path) -> rocksdict.Rdict:
    return rocksdict.Rdict(str(path), StoreOptions().rocksdb())


def merchant_order(state_dir: Path) -> dict[str, tuple[int, int]]:
    """Transaction id -> (merchant shard, sequence number) of every stored verdict."""
    return _sequenced(state_dir, keys.VERDICT, lambda raw: Verdict.decode(raw).seq)


def label_order(state_dir: Path) -> dict[str, tuple[int, int]]:
    """Transaction id -> (merchant shard, sequence number) of every label applied.

    The sequence numbers are those of :func:`merchant_order`: together they give the
    order in which each merchant shard applied labels and scored transactions.
    """
    return _sequenced(state_dir, keys.LABEL, lambda raw: LabelMark.decode(raw).seq)


def _sequenced(state_dir: Path, prefix: bytes, seq_of: Callable[[bytes], int]
               ) -> dict[str, tuple[int, int]]:
    """Transaction id -> (merchant shard, seq_of(value)) of the merchant records at ``prefix``."""
    out: dict[str, tuple[int, int]] = {}
    for role, shard, path in stores(state_dir):
        if role != "merchants":
            continue
        db = _open(path)
        try:
            for key, value in db.items(from_key=prefix):
                if not isinstance(key, bytes) or not key.startswith(prefix):
                    break
                out[key[1:].decode()] = (shard, seq_of(value))
        finally:
            db.close()
    return out


def summary(state_dir: Path) -> list[dict[str, object]]:
    """One line of facts per store."""
    rows: list[dict[str, object]] = []
    for role, shard, path in stores(state_dir):
        db = _open(path)
        try:
            raw_seq = db.get(keys.SEQ_KEY)
            identity = db.get(keys.IDENTITY_KEY)
            rows.append({
                "role": role, "shard": shard,
                "seq": keys.unpack_u64(raw_seq) if raw_seq else 0,
                "identity": json.loads(identity) if identity else None,
                "bytes": (db.property_int_value("rocksdb.total-sst-files-size") or 0)
                + (db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0),
            })
        finally:
            db.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the stores of a stopped flow's state directory."""
    p = argparse.ArgumentParser(prog="python -m state.inspect",
                                description="Show the stores of a (stopped) flow's state.")
    p.add_argument("state_dir", type=Path, help="FRAUD_STATE_DIR of the flow")
    args = p.parse_args(argv)
    if not args.state_dir.is_dir():
        print(f"error: {args.state_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        rows = summary(args.state_dir)
    except Exception as exc:  # a running flow holds the RocksDB lock
        print(f"error: cannot open the stores ({exc}); stop the flow first", file=sys.stderr)
        return 2
    for row in rows:
        print(json.dumps(row, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
