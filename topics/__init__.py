"""Wire contracts and their runtime helpers: what every room says and reads on the topics.

Typed structs and JSON Schemas per topic, the topic registry, settings (and the
record by which a running development broker is found), validation, dead letters,
currency and ISO data, topic administration, the shared producer settings and
topic reader, the typed errors. No features, no models, and no development
tooling: the embedded broker and the command lines are in :mod:`devkit`.
"""
