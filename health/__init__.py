"""Health of the flow's inputs and its HTTP endpoints (``/ready``, ``/metrics``).

:mod:`health.watch`: the input watch (topics that vanish, are re-created or truncated,
a lost broker) and the HTTP server; a failed check stops the flow through
:mod:`lifecycle.process`.
"""
