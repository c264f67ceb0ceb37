"""The end-to-end demo app (``just demo``, ``python -m demo``): the product as a fraud team sees it.

It starts a broker, publishes analyst rules and a blocklist, runs the scoring flow,
streams a simulated world the model has never seen and shows what comes out, live:
throughput, latency per stage, decisions, fraud caught and missed, dead letters,
rule hits. An app on top of every other room; nothing imports it. One module a
job: :mod:`demo.world` (the simulated world and its truth), :mod:`demo.model`
(the model to serve), :mod:`demo.ruleset` (rules and lists), :mod:`demo.flow`
(the flow process), :mod:`demo.traffic` (the producer), :mod:`demo.verdicts` (the
consumer and its tally), :mod:`demo.flowmetrics` (the flow's own metrics),
:mod:`demo.view` (the live view), :mod:`demo.summary` (the end), :mod:`demo.app`
(the command line and the run).
"""
