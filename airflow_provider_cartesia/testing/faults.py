"""Faults a test injects into the simulator, and the route patterns that select requests.

A *path pattern* is an exact path (``/agents/calls/batches``) or one whose ``*`` segments each
match exactly one non-empty path segment (``/agents/calls/batches/*`` matches
``/agents/calls/batches/acb_1`` but neither ``/agents/calls/batches`` nor
``/agents/calls/batches/acb_1/cancel``). A ``{name}`` segment, as in the API reference
(``/agents/calls/batches/{batch_id}``), is the same as ``*``. The query string is never part of
the path. A method of ``"*"`` matches every method.

Faults are applied before authentication, like a proxy or load balancer in front of the API.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

_PROXY_HTML = (
    "<html>\r\n<head><title>{code} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def path_matches(pattern: str, path: str) -> bool:
    """Whether ``path`` matches ``pattern`` (exact, ``*`` = one segment). See the module docstring."""
    if "*" not in pattern and "{" not in pattern:
        return pattern == path
    want = pattern.split("/")
    got = path.split("/")
    if len(want) != len(got):
        return False
    return all(w == g or (_is_wildcard(w) and g != "") for w, g in zip(want, got, strict=True))


def _is_wildcard(segment: str) -> bool:
    return segment == "*" or (len(segment) > 2 and segment[0] == "{" and segment[-1] == "}")


def method_matches(pattern: str, method: str) -> bool:
    """Whether ``method`` matches ``pattern`` (case-insensitive, ``*`` = any)."""
    return pattern == "*" or pattern.upper() == method.upper()


@dataclass(frozen=True)
class Fault:
    """One misbehaviour of the API or the network, applied to a matching request.

    - ``status`` and/or ``body`` set: the request is **not processed**; the simulator answers with
      ``status`` (200 if only ``body`` is given) and ``body`` (a dict becomes JSON, a str is sent as
      text, bytes as is; no body means the API's JSON error body for that status).
    - ``headers``: added to whatever response is sent (e.g. ``Retry-After``).
    - ``delay``: real seconds to wait before doing anything else (a slow server; use it with a
      client timeout). After the wait the request is processed as usual, like a slow server that
      still does the work. The wait is cut short and the connection dropped if the simulator is
      reset or stopped meanwhile.
    - ``drop``: close the connection without any response; the request is not processed.
    - ``drop_after_processing``: process the request fully (a create creates the batch), then close
      the connection without any response.
    - ``malformed_json``: process the request, then send its real status with the JSON body cut off
      halfway (invalid JSON), as if truncated in transit.
    """

    status: int | None = None
    headers: dict[str, str] | None = None
    body: bytes | str | dict[str, Any] | None = None
    delay: float = 0.0
    drop: bool = False
    drop_after_processing: bool = False
    malformed_json: bool = False

    def __post_init__(self) -> None:
        if self.delay < 0:
            raise ValueError("Fault.delay must be >= 0")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError("Fault.status must be an HTTP status code")
        synthetic = self.status is not None or self.body is not None
        kinds = [synthetic, self.drop, self.drop_after_processing, self.malformed_json]
        if sum(kinds) > 1:
            raise ValueError(
                "a Fault is one of: a synthetic response (status/body), drop, drop_after_processing or malformed_json"
            )
        if self.headers and (self.drop or self.drop_after_processing):
            raise ValueError("a dropped connection sends no headers")

    @property
    def processes_request(self) -> bool:
        """Whether the request still reaches the API when this fault applies."""
        return not (self.drop or self.status is not None or self.body is not None)

    @classmethod
    def rate_limited(cls, retry_after: str | None = None) -> Fault:
        """A 429 with the API's ``concurrency_limited`` error body, and ``Retry-After`` if given."""
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        return cls(status=429, headers=headers)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        """A 5xx with the API's JSON error body."""
        return cls(status=status)

    @classmethod
    def html(cls, status: int = 502) -> Fault:
        """An HTML error page from a proxy in front of the API (not JSON)."""
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        return cls(
            status=status,
            headers={"Content-Type": "text/html"},
            body=_PROXY_HTML.format(code=status, phrase=phrase),
        )

    def synthetic_body(self) -> tuple[bytes, str] | None:
        """The body and default content type of a synthetic response; None for the API's error body."""
        if self.body is None:
            return None
        if isinstance(self.body, dict):
            return json.dumps(self.body).encode(), "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return bytes(self.body), "application/octet-stream"


@dataclass
class _Injection:
    method: str
    path: str
    fault: Fault
    remaining: int


class FaultPlan:
    """Injected faults in order of injection; each matching request consumes one use of the first match."""

    def __init__(self) -> None:
        self._items: list[_Injection] = []
        self._lock = threading.Lock()

    def add(self, method: str, path: str, fault: Fault, times: int = 1) -> None:
        if times < 1:
            raise ValueError("times must be >= 1")
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        with self._lock:
            self._items.append(_Injection(method, path, fault, times))

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for item in self._items:
                if method_matches(item.method, method) and path_matches(item.path, path):
                    item.remaining -= 1
                    if item.remaining == 0:
                        self._items.remove(item)
                    return item.fault
        return None

    def pending(self) -> int:
        """How many fault uses are still waiting for a request."""
        with self._lock:
            return sum(item.remaining for item in self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
