"""RocksDB and retention options of the partition stores, in one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

import rocksdict

_COMPRESSION = {
    "none": rocksdict.DBCompressionType.none,
    "lz4": rocksdict.DBCompressionType.lz4,
    "zstd": rocksdict.DBCompressionType.zstd,
    "snappy": rocksdict.DBCompressionType.snappy,
}


@dataclass(frozen=True)
class StoreOptions:
    """Options of one partition store; the defaults suit a 2-core, few-GiB pod."""

    block_cache_bytes: int = 64 << 20
    write_buffer_bytes: int = 32 << 20
    compression: str = "lz4"
    bottommost_compression: str = "zstd"
    bloom_bits_per_key: int = 10
    max_open_files: int = 256
    #: Decoded merchant states kept in memory (write-through, least recently used evicted)
    #: per partition store.
    merchant_cache: int = 20_000
    #: Offsets whose emitted vectors are kept for replay (per partition).
    output_retention: int = 200_000
    #: Applied-label markers older than this (label time) are swept.
    label_horizon_ms: int = 62 * 24 * 3_600_000
    #: Verdicts kept by transaction id for joining late labels (by event time; 0: none).
    #: About 60 bytes per transaction before compression.
    verdict_horizon_ms: int = 35 * 24 * 3_600_000
    #: Lateness tolerated by :meth:`~state.store.PartitionStore.sweep` before deleting idle keys.
    sweep_grace_ms: int = 24 * 3_600_000
    #: fsync every write batch (survives power loss, not only process crashes).
    sync: bool = False

    def rocksdb(self) -> rocksdict.Options:
        """Build the rocksdict options (raw bytes mode: no pickle)."""
        if self.compression not in _COMPRESSION or self.bottommost_compression not in _COMPRESSION:
            raise ValueError(f"compression must be one of {sorted(_COMPRESSION)}")
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(self.write_buffer_bytes)
        opts.set_max_open_files(self.max_open_files)
        opts.set_compression_type(_COMPRESSION[self.compression]())
        opts.set_bottommost_compression_type(_COMPRESSION[self.bottommost_compression]())
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(rocksdict.Cache(self.block_cache_bytes))
        table.set_bloom_filter(self.bloom_bits_per_key, False)
        table.set_cache_index_and_filter_blocks(True)
        opts.set_block_based_table_factory(table)
        return opts

    def write_options(self) -> rocksdict.WriteOptions:
        """Write options for every batch."""
        wo = rocksdict.WriteOptions()
        wo.sync = self.sync
        return wo
