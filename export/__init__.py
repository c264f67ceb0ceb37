"""ONNX export of the trained ensemble, parity checks, model metadata, registry and loader.

The streaming flow uses :func:`export.model.load_model`; nothing here trains.
"""
