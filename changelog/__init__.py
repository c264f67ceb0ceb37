"""The stores' changelog topics (Kafka transport of :mod:`state.changelog`)."""
