"""Feature state: the versioned feature spec, pure window aggregates and the RocksDB store.

Streaming calls :class:`state.store.PartitionStore`; training calls
:func:`state.replay.replay`. Both run the same aggregate classes
(:mod:`state.card`, :mod:`state.merchant`) through :func:`state.features.step`,
so a transaction gets the same float32 vector in both. Nothing here talks to Kafka.
"""
