"""Analyst rules and lists: contracts, CEL compilation, vectorised evaluation, policy, backtest.

The room's entry point for the flow is :class:`rules.book.RuleBook` (apply
``rules``/``lists`` records, evaluate a :class:`rules.batch.RuleBatch`,
snapshot/restore). Nothing here talks to Kafka except the publishing CLI
(``python -m rules.cli``).
"""
