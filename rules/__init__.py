"""Analyst rules and lists: contracts, CEL compilation, vectorised evaluation, policy, backtest.

The room's entry point for the flow is :class:`rules.book.RuleBook` (apply
``rules``/``lists`` records, evaluate a :class:`rules.batch.RuleBatch`,
snapshot/restore). Only records signed by trusted analysts apply, and changes that
loosen decisions need two (:mod:`rules.signing`, :mod:`rules.approval`; the
publisher's audit trail: :mod:`rules.audit`; ``docs/rules-security.md``).
Nothing here talks to Kafka except the publishing CLI (``python -m rules.cli``).
"""
