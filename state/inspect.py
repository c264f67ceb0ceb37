"""Look into a stopped flow's state directory: stores, identities, sizes.

``python -m state.inspect STATE_DIR`` prints each store's identity, sequence
number and approximate size.

Open only a stopped flow's directory: RocksDB allows one writer per store.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import rocksdict

from state import keys
from state.options import StoreOptions


def stores(state_dir: Path) -> Iterator[tuple[str, int, Path]]:
    """``(role, shard, path)`` of every store under ``state_dir``, sorted."""
    for role in ("cards", "merchants"):
        root = Path(state_dir) / role
        if root.is_dir():
            for path in sorted(root.iterdir(), key=lambda p: int(p.name)):
                yield role, int(path.name), path


def _open(path: Path) -> rocksdict.Rdict:
    return rocksdict.Rdict(str(path), StoreOptions().rocksdb())


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
