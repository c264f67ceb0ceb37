"""The flow process's lifecycle: start-up checks, signals, a clean stop, exit codes.

:mod:`lifecycle.process` (see its docstring for the exit codes and the stop sequence).
"""
