"""The simulator's clock: time that a test moves by hand, or real time optionally sped up.

Batch progression is derived at read time from this clock, so a test advances it instead of sleeping::

    clock = SimClock(start=datetime(2026, 6, 1, tzinfo=timezone.utc))
    clock.advance(90)            # 90 simulated seconds pass, instantly

``SimClock.real(speed=60)`` follows the wall clock, one real second being a simulated minute (demos).
``tick_per_request`` makes every request the simulator receives advance the clock, so a client that
polls in a loop sees progress without anyone calling :meth:`SimClock.advance`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone


def _utc(when: datetime, what: str) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got a naive datetime")
    return when.astimezone(timezone.utc)


def _wall_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class SimClock:
    """A thread-safe clock whose :meth:`now` is an aware UTC datetime.

    The default, manual clock starts at ``start`` (the current wall time, whole seconds, when
    omitted) and moves only through :meth:`advance`, :meth:`advance_to` or ``tick_per_request``.
    """

    def __init__(self, start: datetime | None = None, *, tick_per_request: float = 0.0) -> None:
        self._start = _utc(start, "start") if start is not None else _wall_now()
        if tick_per_request < 0:
            raise ValueError("tick_per_request must be >= 0")
        self.tick_per_request = float(tick_per_request)
        self._initial_tick = self.tick_per_request
        self._speed: float | None = None  # None: manual clock
        self._timer: Callable[[], float] = time.monotonic
        self._offset = 0.0  # seconds added by advance()
        self._origin = self._timer()
        self._lock = threading.Lock()

    @classmethod
    def real(
        cls, speed: float = 1.0, *, start: datetime | None = None, timer: Callable[[], float] = time.monotonic
    ) -> SimClock:
        """A clock that follows wall time, ``speed`` simulated seconds per real second, from now.

        ``timer`` (seconds, monotonic) is there for tests of the clock itself.
        """
        if speed <= 0:
            raise ValueError("speed must be > 0")
        clock = cls(start)
        clock._speed = float(speed)
        clock._timer = timer
        clock._origin = timer()
        return clock

    @property
    def start(self) -> datetime:
        """The time the clock started at (and goes back to on :meth:`reset`)."""
        return self._start

    @property
    def is_real(self) -> bool:
        """True for a clock made by :meth:`real`."""
        return self._speed is not None

    def now(self) -> datetime:
        """The current simulated time (aware, UTC)."""
        with self._lock:
            elapsed = self._offset
            if self._speed is not None:
                elapsed += (self._timer() - self._origin) * self._speed
        return self._start + timedelta(seconds=elapsed)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (also works on a real clock: it jumps ahead)."""
        if seconds < 0:
            raise ValueError("a SimClock never goes backwards")
        with self._lock:
            self._offset += seconds

    def advance_to(self, when: datetime) -> None:
        """Move the clock forward to ``when``; a time already passed is a no-op."""
        delta = (_utc(when, "when") - self.now()).total_seconds()
        if delta > 0:
            self.advance(delta)

    def tick(self) -> None:
        """Called by the server for every request received: advances by ``tick_per_request``."""
        if self.tick_per_request:
            self.advance(self.tick_per_request)

    def reset(self) -> None:
        """Back to the start time and the initial ``tick_per_request`` (a real clock starts following
        wall time again from here)."""
        with self._lock:
            self.tick_per_request = self._initial_tick
            self._offset = 0.0
            self._origin = self._timer()

    def __repr__(self) -> str:
        kind = f"real, speed={self._speed}" if self._speed is not None else "manual"
        return f"SimClock({kind}, now={self.now().isoformat()})"
