"""A clock that tests move by hand."""

from __future__ import annotations

import threading
import time

__all__ = ["FakeClock"]


class FakeClock:
    """A frozen, thread-safe clock that only moves when a test moves it.

    The fake stamps ``created`` fields and idempotency keys with it, so
    ``clock.advance(24 * 3600 + 1)`` ages every stored idempotency key past
    Stripe's 24-hour pruning window.  It starts at the real time by default.
    """

    def __init__(self, start: float | None = None) -> None:
        """Create a clock reading ``start`` (Unix seconds; default: now)."""
        self._lock = threading.Lock()
        self._now = time.time() if start is None else float(start)

    def now(self) -> float:
        """Return the current fake time in Unix seconds."""
        with self._lock:
            return self._now

    def timestamp(self) -> int:
        """Return the current fake time in whole seconds, as Stripe's ``created``."""
        return int(self.now())

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (which must not be negative)."""
        if seconds < 0:
            raise ValueError("a FakeClock only moves forward")
        with self._lock:
            self._now += seconds

    def set(self, timestamp: float) -> None:
        """Set the clock to ``timestamp`` (Unix seconds), forwards or backwards."""
        with self._lock:
            self._now = float(timestamp)
