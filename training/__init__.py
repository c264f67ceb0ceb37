"""Offline room: simulator, history import, point-in-time feature replay, training, report.

Features come only from ``state`` (replayed); the trained ensemble goes to ``export``.
"""
