"""The simulator's request log: every request received, in arrival order, faults and errors included."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow_provider_cartesia.testing.faults import method_matches, path_matches

_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "proxy-authorization", "cookie"})


@dataclass(frozen=True, repr=False)
class RecordedRequest:
    """One request as received. ``headers`` keeps real values (tests may assert on them); ``repr``
    masks credentials so an assertion message never shows an API key."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any | None
    at: datetime  # simulated time of arrival

    def __repr__(self) -> str:
        shown = {k: ("***" if k in _SECRET_HEADERS else v) for k, v in self.headers.items()}
        return (
            f"RecordedRequest(method={self.method!r}, path={self.path!r}, query={self.query!r}, "
            f"headers={shown!r}, body=<{len(self.body)} bytes>, at={self.at.isoformat()})"
        )


class RequestLog:
    def __init__(self) -> None:
        self._items: list[RecordedRequest] = []
        self._served: dict[int, int] = {}  # id(request) -> response body bytes
        self._lock = threading.Lock()

    def append(self, request: RecordedRequest) -> None:
        with self._lock:
            self._items.append(request)

    def served(self, request: RecordedRequest, size: int) -> None:
        """Record the size of the response body sent for ``request`` (what a client downloaded)."""
        with self._lock:
            self._served[id(request)] = self._served.get(id(request), 0) + size

    def bytes_served(self, method: str | None = None, path: str | None = None) -> int:
        """Response body bytes sent for the matching requests (as :meth:`count` matches them)."""
        with self._lock:
            items, served = list(self._items), dict(self._served)
        return sum(
            served.get(id(r), 0)
            for r in items
            if (method is None or method_matches(method, r.method)) and (path is None or path_matches(path, r.path))
        )

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """Requests whose method matches (any if None) and whose path matches the pattern (any if None)."""
        return sum(
            1
            for r in self.snapshot()
            if (method is None or method_matches(method, r.method)) and (path is None or path_matches(path, r.path))
        )

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._served.clear()
