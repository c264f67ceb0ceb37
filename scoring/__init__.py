"""The scoring room: how a verdict is decided and written, over a whole batch, as pure functions.

* :mod:`scoring.serving`: the model a batch is scored with (champion or shadow)
  and its thresholds, with the ``FRAUD_*_THRESHOLD`` overrides;
* :mod:`scoring.decide`: features, champion and shadow, rule book and the decision
  policy (:mod:`scoring.policy`) -> decisions as arrays, reason codes for what
  the model flagged (:mod:`scoring.reasons`);
* :mod:`scoring.render`: decisions -> the encoded ``predictions`` records.

No store, topic, clock or metric is touched here: the merchant stage
(:mod:`flows.merchant_stage`) hands a batch in and publishes what comes out, and
``just score-file`` (:mod:`training.score_file`) calls the same functions offline.
"""
