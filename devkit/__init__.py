"""Development tooling: the embedded broker and the commands that feed, read and run the stream.

What a developer, a test or the demo needs around the product: the embedded
Tansu broker and how a development command gets a broker (:mod:`devkit.broker`),
the ``just topics``/``produce``/``tail``/``labels`` command lines, the launcher of
the scoring flow as a child process (:mod:`devkit.process`) and the death signal
that keeps such children from outliving their parent. The flow and the libraries
never import it; other rooms' command lines (the rules CLI) use it to get a
broker the development way. The wire contracts and the runtime helpers these
build on (producer settings, topic reader, topic admin) stay in :mod:`topics`.
"""
