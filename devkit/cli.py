"""What every command-line tool does with Ctrl-C, a closed pipe and a typed error."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException

from topics.errors import FraudStreamError


def run_cli(
    body: Callable[[], None],
    errors: tuple[type[Exception], ...] = (FraudStreamError,),
) -> int:
    """Run a command's body; return its exit code (0 ok, 1 error, 130 interrupted)."""
    try:
        body()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KafkaException as exc:  # a client error the command did not name: one line
        err = exc.args[0] if exc.args else exc
        text = err.str() if hasattr(err, "str") else str(err)
        print(f"error: Kafka: {text}; check KAFKA_BOOTSTRAP_SERVERS, that the broker is "
              "running, and any FRAUD_KAFKA_* setting", file=sys.stderr)
        return 1
    return 0


#: Width of a table written to a pipe or a file (rich would squeeze it to 80 columns).
PIPE_WIDTH = 200


def table_console(width: int | None = None, *, stderr: bool = False) -> Any:
    """A ``rich`` console for tables: the terminal's width, or :data:`PIPE_WIDTH` in a pipe.

    ``width`` (a ``--width`` option) wins; ``COLUMNS`` in the environment is honoured as
    rich does. Returns a :class:`rich.console.Console`.
    """
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if width is None and not stream.isatty() and "COLUMNS" not in os.environ:
        width = PIPE_WIDTH
    return Console(width=width, stderr=stderr)
