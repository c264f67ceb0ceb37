"""RocksDB and retention options of the state stores, in one frozen dataclass.

Memory is budgeted per **process**, not per store: every store of a process
shares one block cache and one write-buffer manager that charges memtables to
that cache (RocksDB's "cost memtable to block cache"), so sixteen shards cost
what one does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import rocksdict

_COMPRESSION = {
    "none": rocksdict.DBCompressionType.none,
    "lz4": rocksdict.DBCompressionType.lz4,
    "zstd": rocksdict.DBCompressionType.zstd,
    "snappy": rocksdict.DBCompressionType.snappy,
}
DAY_MS = 86_400_000


@functools.cache
def _shared(
    cache_bytes: int, write_buffer_bytes: int
) -> tuple[rocksdict.Cache, rocksdict.WriteBufferManager]:
    """The process's block cache and the write-buffer manager charged to it."""
    cache = rocksdict.Cache(cache_bytes)
    manager = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
        write_buffer_bytes, False, cache
    )
    return cache, manager


@dataclass(frozen=True)
class StoreOptions:
    """Options of the state stores; the defaults suit a 2-core pod with 512 MiB for the flow."""

    #: Block cache shared by every store of the process (memtables are charged to it too).
    block_cache_bytes: int = 96 << 20
    #: All memtables of the process together (a share of the block cache).
    write_buffer_bytes: int = 48 << 20
    #: One memtable of one store before it is flushed.
    memtable_bytes: int = 16 << 20
    compression: str = "lz4"
    bottommost_compression: str = "zstd"
    bloom_bits_per_key: int = 10
    max_open_files: int = 256
    #: Decoded merchant states kept in memory per merchant store (least recently used evicted).
    merchant_cache: int = 20_000
    #: Transaction ids remembered (re-delivery detection, stored verdicts for re-emission),
    #: by event time. Also how long a label waits for its transaction.
    txn_horizon_ms: int = 35 * DAY_MS
    #: How long after its transaction (UTC days) a label still joins it: a compact record
    #: per scored transaction and its label in force are kept this long (state.labels).
    label_horizon_ms: int = 180 * DAY_MS
    #: Feature rows of recent verdicts kept for recounting drift after a crash (per store).
    recent_rows: int = 200_000
    #: Expiry index entries processed per batch (spreads each day's expiry over many batches).
    expiry_step: int = 2_000
    #: Most transactions a store commits in one write batch: a longer batch is applied as
    #: several in order (the same result), so no stored value (a batch's rows blob, its
    #: expiry index record) nor changelog record grows past ~0.5 MB (Kafka's limit is 1 MB).
    commit_max: int = 2_048
    #: fsync every write batch (survives power loss, not only process crashes).
    sync: bool = False

    def rocksdb(self) -> rocksdict.Options:
        """Build the rocksdict options (raw bytes mode: no pickle)."""
        if self.compression not in _COMPRESSION or self.bottommost_compression not in _COMPRESSION:
            raise ValueError(f"compression must be one of {sorted(_COMPRESSION)}")
        cache, manager = _shared(self.block_cache_bytes, self.write_buffer_bytes)
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(self.memtable_bytes)
        opts.set_max_write_buffer_number(2)
        opts.set_write_buffer_manager(manager)
        opts.set_max_open_files(self.max_open_files)
        opts.set_compression_type(_COMPRESSION[self.compression]())
        opts.set_bottommost_compression_type(_COMPRESSION[self.bottommost_compression]())
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(cache)
        table.set_bloom_filter(self.bloom_bits_per_key, False)
        table.set_cache_index_and_filter_blocks(True)
        opts.set_block_based_table_factory(table)
        return opts

    def write_options(self) -> rocksdict.WriteOptions:
        """Write options for every batch."""
        wo = rocksdict.WriteOptions()
        wo.sync = self.sync
        return wo
