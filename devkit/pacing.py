"""Pace a producer: a token bucket that allows ``rate`` events per second (clock passed in).

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

import time
from collections.abc import Callable


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
