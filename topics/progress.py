"""Rate limiting and progress reporting for the command-line tools (clock passed in).

>>> clock = iter([0.0, 0.0, 0.0, 1.0]).__next__
>>> bucket = TokenBucket(rate=10, burst=5, clock=clock)
>>> bucket.delay(5)   # the burst is available at once
0.0
>>> bucket.delay(5)   # the bucket is empty: five more tokens take half a second
0.5
>>> bucket.delay(5)   # a second later the bucket has refilled (capped at the burst)
0.0
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class TokenBucket:
    """Allow ``rate`` events per second on average, with bursts of up to ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 20)
        self.clock = clock
        self.tokens = self.burst
        self.last = clock()

    def delay(self, n: float = 1.0) -> float:
        """Take ``n`` tokens; return how long to sleep before the events may happen."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def wait(self, n: float = 1.0) -> None:
        """Block until ``n`` events are allowed."""
        pause = self.delay(n)
        if pause > 0:
            time.sleep(pause)


def format_duration(seconds: float) -> str:
    """Compact duration.

    >>> format_duration(5.2), format_duration(125), format_duration(3725)
    ('5s', '2m05s', '1h02m')
    """
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """A one-line progress report on stderr: count, rate, ETA; at most ``hz`` updates/s.

    On a terminal the line is rewritten in place; otherwise a line is written every
    few seconds. ``done()`` writes the final count.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        hz: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.clock = clock
        self.tty = self.stream.isatty()
        self.interval = 1.0 / hz if self.tty else 5.0
        self.start = clock()
        self.next_at = self.start + self.interval
        self.count = 0

    def line(self, count: int, now: float) -> str:
        """The status text for ``count`` items at time ``now``."""
        elapsed = max(now - self.start, 1e-9)
        rate = count / elapsed
        text = f"{self.label}: {count:,}"
        if self.total is not None:
            pct = 100.0 * count / self.total if self.total else 100.0
            text += f"/{self.total:,} ({pct:.0f}%)"
        text += f"  {rate:,.0f} msg/s  {format_duration(elapsed)}"
        if self.total is not None and rate > 0 and count < self.total:
            text += f"  ETA {format_duration((self.total - count) / rate)}"
        return text

    def update(self, count: int) -> None:
        """Record progress; redraw if the last redraw is old enough."""
        self.count = count
        if not self.enabled:
            return
        now = self.clock()
        if now >= self.next_at:
            self.next_at = now + self.interval
            self._emit(self.line(count, now), final=False)

    def done(self, count: int | None = None) -> None:
        """Write the final line."""
        if count is not None:
            self.count = count
        if self.enabled:
            self._emit(self.line(self.count, self.clock()), final=True)

    def _emit(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
