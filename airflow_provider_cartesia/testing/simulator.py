"""``CartesiaSimulator``: a local, loopback-only stand-in for the Cartesia agent-calls API.

Usage::

    with CartesiaSimulator() as sim:              # http://127.0.0.1:<ephemeral port>
        batch_id = sim.seed_batch(recipients=50)
        sim.clock.advance(600)                    # ten simulated minutes pass
        requests.get(f"{sim.url}/agents/calls/batches/{batch_id}",
                     headers={"Authorization": f"Bearer {sim.api_key}", "Cartesia-Version": "2026-03-01"})

Behaviour follows cartesia-api.md; the modelling choices are documented in ``state.py`` (timing and
outcomes), ``api.py`` (routes, errors, pagination), ``validation.py`` (400 rules) and ``faults.py``.
Only the standard library is imported.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

from airflow_provider_cartesia.testing.api import ApiError, CartesiaApi
from airflow_provider_cartesia.testing.clock import SimClock
from airflow_provider_cartesia.testing.faults import Fault, FaultPlan
from airflow_provider_cartesia.testing.recording import RecordedRequest, RequestLog
from airflow_provider_cartesia.testing.server import ServerContext, SimHTTPServer, check_loopback
from airflow_provider_cartesia.testing.state import (
    OUTCOME_KINDS,
    BatchTimes,
    CallProfile,
    batch_times,
    truncate_ms,
)
from airflow_provider_cartesia.testing.validation import METADATA_MAX_BYTES, REGIONS
from airflow_provider_cartesia.testing.views import batch_json, call_json

DEFAULT_API_KEY = "sk_car_test_key"
DEFAULT_ORG_CONCURRENCY_LIMIT = 20

_SETTINGS = (
    "latency",
    "org_concurrency_limit",
    "unknown_agent_ids",
    "unknown_phone_number_ids",
    "sip_trunk_number_ids",
    "telephony_region",
    "metadata_max_bytes",
    "dispatch_interval",
    "call_seconds",
    "outcomes",
)


def _seed_numbers(count: int) -> list[tuple[str, dict[str, Any] | None]]:
    return [(f"+1415{5_550_000 + i:07d}", {"customer_id": f"cust_{i + 1:05d}"}) for i in range(count)]


class CartesiaSimulator:
    """A simulated Cartesia API served over real HTTP on 127.0.0.1.

    Settings read on every request (a test may change them at any time; :meth:`reset` restores the
    values they had after construction):

    - ``latency``: seconds added to every response (each connection has its own thread).
    - ``org_concurrency_limit`` (20): a create's ``target_concurrency_limit`` above it is a 400.
    - ``unknown_agent_ids`` / ``unknown_phone_number_ids``: ids the API answers 404 for on create;
      any agent id starting with ``agent_missing`` and any number id starting with ``pn_missing``
      are unknown too. Every other id exists.
    - ``sip_trunk_number_ids``: phone-number ids backed by a SIP trunk; ids starting with ``pn_sip``
      are SIP-trunk numbers too, every other number is Cartesia-hosted. A create's ``region`` is
      accepted only for a SIP-trunk number (else 400), as Cartesia documents.
    - ``telephony_region`` (``"US"``): the telephony account's region, which a batch created
      without ``region`` gets.
    - ``metadata_max_bytes`` (4096, None: no limit): a recipient's ``metadata`` larger than this
      as compact JSON is a 400. Cartesia documents the 400 but not the number (docs/simulator.md).
    - ``dispatch_interval`` (1.0 s), ``call_seconds`` ((20, 90) s) and ``outcomes`` (None: the
      default mix) shape batches and calls created *through the API*; :meth:`seed_batch` takes its
      own.
    """

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: SimClock | None = None,
        seed: int = 0,
        latency: float = 0.0,
    ) -> None:
        check_loopback(host)
        self.api_key = api_key
        self.host = host
        self.seed = seed
        self.clock = clock if clock is not None else SimClock()
        self.latency = float(latency)
        self.org_concurrency_limit = DEFAULT_ORG_CONCURRENCY_LIMIT
        self.unknown_agent_ids: set[str] = set()
        self.unknown_phone_number_ids: set[str] = set()
        self.sip_trunk_number_ids: set[str] = set()
        self.telephony_region = "US"
        self.metadata_max_bytes: int | None = METADATA_MAX_BYTES
        self.dispatch_interval = 1.0
        self.call_seconds: tuple[float, float] = (20.0, 90.0)
        self.outcomes: dict[str, float] | None = None
        self.server_errors: list[BaseException] = []
        self._requested_port = port
        self._initial = {name: self._copy(getattr(self, name)) for name in _SETTINGS}
        self._api = CartesiaApi(self, self.clock, seed)
        self._faults = FaultPlan()
        self._log = RequestLog()
        self._abort = threading.Event()
        self._server: SimHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _copy(value: Any) -> Any:
        return set(value) if isinstance(value, set) else dict(value) if isinstance(value, dict) else value

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> CartesiaSimulator:
        """Bind and serve in a daemon thread; returns ``self``. Starting twice is a no-op."""
        if self._server is not None:
            return self
        self._abort = threading.Event()
        context = ServerContext(
            api=self._api,
            clock=self.clock,
            faults=self._faults,
            log=self._log,
            errors=self.server_errors,
            latency=lambda: self.latency,
            abort_event=lambda: self._abort,
        )
        self._server = SimHTTPServer((self.host, self._requested_port), context)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="cartesia-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and cut delayed requests short. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        self._abort.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> CartesiaSimulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        """Forget batches, calls, faults, the request log and server errors; restore the settings;
        put the clock back to its start. The server keeps running."""
        old_abort, self._abort = self._abort, threading.Event()
        old_abort.set()
        with self._api.lock:
            self._api.reset()
            self._faults.clear()
            self._log.clear()
            self.server_errors.clear()
            self.clock.reset()
            for name, value in self._initial.items():
                setattr(self, name, self._copy(value))

    # ---- seeding and inspection -------------------------------------------------------------------

    def seed_batch(
        self,
        *,
        name: str = "Seeded batch",
        agent_id: str = "agent_sim",
        from_number_id: str = "pn_sim",
        recipients: int | list[dict[str, Any]] = 10,
        scheduled_at: datetime | None = None,
        created_at: datetime | None = None,
        dispatch_interval: float = 1.0,
        call_seconds: tuple[float, float] = (20.0, 90.0),
        outcomes: Mapping[str, float] | None = None,
        target_concurrency_limit: int = 10,
        ringing_timeout_seconds: int = 60,
        max_call_duration_minutes: int = 480,
        region: str | None = None,
    ) -> str:
        """Create a batch directly (no HTTP, no validation beyond shapes); returns its id.

        ``recipients`` is a count (numbers ``+14155550000``... with metadata ``{"customer_id":
        "cust_00001"}``...) or a list of ``{"to_number": ..., "metadata": ..., "outcome": ...}``
        where the optional ``outcome`` (one of ``OUTCOME_KINDS``) forces that recipient's first
        attempt; other attempts (and recipients without it) draw from ``outcomes``. The batch is
        created at ``created_at`` (default: the clock's now) and dispatches from
        ``max(created_at, scheduled_at)``; see ``state.py`` for the timing model. ``region`` is
        for a SIP-trunk ``from_number_id`` only (ValueError otherwise, like the API's 400); omitted,
        the batch gets ``telephony_region``.
        """
        if region is not None and region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}")
        forced: list[str | None] | None = None
        if isinstance(recipients, int):
            if recipients < 1:
                raise ValueError("a batch needs at least one recipient")
            lines = _seed_numbers(recipients)
        else:
            if not recipients:
                raise ValueError("a batch needs at least one recipient")
            lines = [(str(item["to_number"]), item.get("metadata")) for item in recipients]
            forced = [item.get("outcome") for item in recipients]
            unknown = {kind for kind in forced if kind is not None and kind not in OUTCOME_KINDS}
            if unknown:
                raise ValueError(f"unknown outcome kinds {sorted(unknown)}; known: {', '.join(OUTCOME_KINDS)}")
        profile = CallProfile(dispatch_interval=dispatch_interval, call_seconds=call_seconds, outcomes=outcomes)
        with self._api.lock:
            try:
                region = self._api.batch_region(from_number_id, region)
            except ApiError as exc:
                raise ValueError(exc.message) from None
            now = truncate_ms(created_at if created_at is not None else self.clock.now())
            batch = self._api.state.create_batch(
                now=now,
                name=name,
                agent_id=agent_id,
                from_number_id=from_number_id,
                recipients=lines,
                profile=profile,
                target_concurrency_limit=target_concurrency_limit,
                ringing_timeout_seconds=ringing_timeout_seconds,
                max_call_duration_minutes=max_call_duration_minutes,
                scheduled_at=truncate_ms(scheduled_at) if scheduled_at is not None else None,
                region=region,
                first_outcomes=forced,
                telephony_account_type=self._api.telephony_account_type(from_number_id),
            )
            return batch.id

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel a batch now, as ``POST .../cancel`` would (no HTTP); returns the batch. KeyError if unknown."""
        with self._api.lock:
            batch = self._api.state.batches[batch_id]
            now = truncate_ms(self.clock.now())
            self._api.state.cancel_batch(batch, now)
            return batch_json(batch, now, with_recipients=False)

    def connection_json(self, api_version: str = "2026-03-01", **extra: Any) -> str:
        """The value of an ``AIRFLOW_CONN_<ID>`` variable (JSON form) for a ``cartesia`` connection here."""
        return json.dumps(
            {
                "conn_type": "cartesia",
                "host": self.url,
                "password": self.api_key,
                "extra": {"api_version": api_version, **extra},
            }
        )

    def batch(self, batch_id: str) -> dict[str, Any]:
        """What ``GET /agents/calls/batches/{batch_id}`` would return now. KeyError if unknown."""
        with self._api.lock:
            return batch_json(self._api.state.batches[batch_id], self.clock.now(), with_recipients=True)

    def batch_times(self, batch_id: str) -> BatchTimes:
        """When the batch is admitted, fully dispatched and fully finished, barring cancel/retry."""
        with self._api.lock:
            return batch_times(self._api.state.batches[batch_id])

    def batch_ids(self) -> list[str]:
        """Every batch id, in creation order (oldest first)."""
        with self._api.lock:
            return list(self._api.state.batches)

    def batch_count(self) -> int:
        with self._api.lock:
            return len(self._api.state.batches)

    def call(self, call_id: str) -> dict[str, Any]:
        """What ``GET /agents/calls/{call_id}`` would return now. KeyError if it has no record yet."""
        with self._api.lock:
            now = self.clock.now()
            found = self._api.state.visible_call(call_id, now)
            if found is None:
                raise KeyError(call_id)
            return call_json(*found, now, with_transcript=True)

    # ---- request log and faults -------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the request log, in arrival order."""
        return self._log.snapshot()

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests were received, optionally only one method and/or a path pattern
        (an exact path, or ``*`` for one segment: ``/agents/calls/batches/*``; no query string)."""
        return self._log.count(method, path)

    def inject(self, method: str, path: str, fault: Fault, times: int = 1) -> None:
        """Apply ``fault`` to the next ``times`` requests matching ``method`` (or ``"*"``) and the path
        pattern. A request consumes the earliest injection it matches."""
        self._faults.add(method, path, fault, times)

    def pending_faults(self) -> int:
        """Fault uses injected but not consumed yet."""
        return self._faults.pending()

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "not started"
        return f"CartesiaSimulator({where}, batches={self.batch_count()})"
