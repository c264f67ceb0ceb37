"""Drift and label feedback: the windows each merchant shard counts, their merge, the samples.

* :mod:`drift.windows`: per-shard drift windows (score PSI, feature shift, decisions,
  shadow agreement, rule hits, label feedback) merged into one snapshot per window;
* :mod:`drift.samples`: the sampled feature rows the flow writes for offline drift reports.

Pure: no Bytewax, no Kafka; :mod:`flows.merchant_stage` calls them.
"""
