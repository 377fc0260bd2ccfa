"""CallBatchEventTrigger: an asset event for every call batch that settles (event-driven scheduling).

Cartesia pushes nothing per batch, so the trigger reads the batch list (counters, no recipients)
every ``poll_interval`` and emits one event per batch that settles, by the sensor's rule. At least
once, with a watermark kept in the asset's state store where Airflow has one; see docs/events.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Hashable
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_cartesia.api import DEFAULT_CONN_ID
from airflow_provider_cartesia.compat import asset_state_store
from airflow_provider_cartesia.exceptions import CartesiaError, is_permanent
from airflow_provider_cartesia.hooks.cartesia import CartesiaHookMixin
from airflow_provider_cartesia.models import CallBatch, WaitFor, aware_datetime
from airflow_provider_cartesia.polling import LIST_PAGE_SIZE, MAX_BACKOFF_FACTOR, MAX_LIST_PAGES
from airflow_provider_cartesia.waiting import WaitCriteria

WATERMARK_KEY = "cartesia_settled_since"
"""Key of the watermark in the asset's state store (Airflow 3.3)."""
CLOCK_SKEW = 60.0
"""Seconds the watermark stays behind this machine's clock: a batch that settles while the list is
read page by page, or with Cartesia's clock a little behind ours, is still seen next round."""
SETTLED_HORIZON = 86_400.0
"""A list page whose batches are all settled and unchanged for this long ends the walk: older pages
are history. (A batch retried later than that, beyond the first page, is not seen; see docs/events.md.)"""


def settled_event(batch: CallBatch, outcome: str) -> dict[str, Any]:
    """The event payload: ids, status and counts (never a recipient)."""
    return {
        "batch_id": batch.id,
        "agent_id": batch.agent_id,
        "name": batch.name,
        "status": batch.status,
        "outcome": outcome,
        "total_calls_scheduled": batch.total_calls_scheduled,
        "total_calls_dispatched": batch.total_calls_dispatched,
        "total_calls_finished": batch.total_calls_finished,
        "retry_count": batch.retry_count,
        "last_updated_at": batch.last_updated_at.isoformat() if batch.last_updated_at else None,
    }


class SettledBatches:
    """Which batches of a list read are newly settled, and how far the watermark may move (no I/O).

    The watermark moves to the latest emitted change, never past a batch still running nor closer
    than :data:`CLOCK_SKEW` to the round's start; emitted ones are remembered until it passes them.
    """

    def __init__(self, criteria: WaitCriteria, since: datetime) -> None:
        self.criteria = criteria
        self.since = since
        self.emitted: set[tuple[str, datetime]] = set()

    def take(self, batches: list[CallBatch], round_started: float) -> list[dict[str, Any]]:
        events = []
        latest = self.since
        ceiling = datetime.fromtimestamp(round_started - CLOCK_SKEW, timezone.utc)
        for batch in batches:
            changed = batch.last_updated_at
            outcome = self.criteria.classify(batch)
            if outcome == "waiting":
                if changed is not None:
                    ceiling = min(ceiling, changed)
                continue
            if changed is None or changed <= self.since:
                continue
            key = (batch.id, changed)
            if key not in self.emitted:
                self.emitted.add(key)
                events.append(settled_event(batch, outcome))
            latest = max(latest, changed)
        self.since = max(self.since, min(latest, ceiling))
        self.emitted = {key for key in self.emitted if key[1] > self.since}
        return events


class CallBatchEventTrigger(CartesiaHookMixin, BaseEventTrigger):
    """Emit one event per call batch that settles: for ``AssetWatcher``, to run a DAG per settled batch.

    Payload: ``batch_id``, ``agent_id``, ``name``, ``status``, ``outcome`` (``success`` or
    ``failure``, the wait's words), the ``total_calls_*`` counters, ``retry_count`` and
    ``last_updated_at``. Runs forever; failed reads are retried with a growing interval; a refused
    key or request (401, 403, 400) ends it with an error.

    :param agent_id: watch this agent's batches; None: every batch the connection's key sees.
    :param cartesia_conn_id: the Airflow connection; only its id is stored.
    :param poll_interval: seconds between two reads of the list.
    :param since: RFC 3339; batches that settled at or before it are not emitted. None: from when
        the trigger first runs. The asset's state store, when there is one, holds a later watermark.
    :param wait_for, success_statuses, failure_statuses: the sensor's settled rule
        (:class:`~airflow_provider_cartesia.waiting.WaitCriteria`).
    :param max_pages: list pages (100 batches each) read per round at most.
    """

    def __init__(
        self,
        agent_id: str | None = None,
        cartesia_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 60.0,
        since: datetime | str | None = None,
        wait_for: WaitFor = WaitCriteria.wait_for,
        success_statuses: Collection[str] = WaitCriteria.success_statuses,
        failure_statuses: Collection[str] = WaitCriteria.failure_statuses,
        max_pages: int = MAX_LIST_PAGES,
    ) -> None:
        super().__init__()
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        self.agent_id = agent_id or None
        self.cartesia_conn_id = cartesia_conn_id
        self.poll_interval = float(poll_interval)
        self.since = aware_datetime(since, "since")
        self.criteria = WaitCriteria.of(wait_for, success_statuses, failure_statuses)
        self.max_pages = int(max_pages)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "agent_id": self.agent_id,
                "cartesia_conn_id": self.cartesia_conn_id,
                "poll_interval": self.poll_interval,
                "since": self.since.isoformat() if self.since else None,
                "wait_for": self.criteria.wait_for,
                "success_statuses": list(self.criteria.success_statuses),
                "failure_statuses": list(self.criteria.failure_statuses),
                "max_pages": self.max_pages,
            },
        )

    # -- one read of the list, shared -------------------------------------------------------------

    def shared_stream_key(self) -> Hashable | None:
        """Siblings on one connection, agent and interval share one read of the list (Airflow 3.3)."""
        return ("cartesia-call-batches", self.cartesia_conn_id, self.agent_id, self.poll_interval, self.max_pages)

    @classmethod
    async def open_shared_stream(cls, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """Read the list every interval; yield ``(round_started, batches)`` (counters, no recipients)."""
        reader = cls(**kwargs)
        async for snapshot in reader._snapshots():
            yield snapshot

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        """This trigger's events from the shared reads: newly settled batches past its watermark."""
        settled = SettledBatches(self.criteria, await self._load_watermark())
        async for round_started, batches in shared_stream:
            before = settled.since
            for payload in settled.take(batches, round_started):
                self.log.info("Call batch %s settled (%s)", payload["batch_id"], payload["status"])
                yield TriggerEvent(payload)
            if settled.since > before:
                await self._save_watermark(settled.since)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Without the triggerer's shared streams: read the list on its own."""
        async for event in self.filter_shared_stream(self._snapshots()):
            yield event

    # -- I/O ----------------------------------------------------------------------------------------

    def _now(self) -> float:
        return time.time()

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _snapshots(self) -> AsyncIterator[tuple[float, list[CallBatch]]]:
        failures = 0
        while True:
            started = self._now()
            try:
                batches = await self._read_list(started)
            except CartesiaError as exc:
                if is_permanent(exc):
                    raise
                failures += 1
                self.log.warning("Reading the call batch list failed (%d in a row): %s", failures, exc)
            else:
                failures = 0
                yield started, batches
            delay = self.poll_interval * min(2**failures, MAX_BACKOFF_FACTOR)
            await self._sleep(max(started + delay - self._now(), 0.0))

    async def _read_list(self, started: float) -> list[CallBatch]:
        """Newest first, up to ``max_pages`` pages, stopping at a page of long-settled batches."""
        horizon = datetime.fromtimestamp(started - SETTLED_HORIZON, timezone.utc)
        batches: list[CallBatch] = []
        cursor = None
        for _ in range(self.max_pages):
            page = await self.hook.alist_call_batch_page(self.agent_id, LIST_PAGE_SIZE, cursor)
            batches.extend(page.data)
            history = all(
                b.is_settled and b.last_updated_at is not None and b.last_updated_at < horizon for b in page.data
            )
            if not page.has_more or not page.data or history:
                break
            cursor = page.next_page or page.data[-1].id
        return batches

    async def _load_watermark(self) -> datetime:
        """The later of ``since`` and the stored watermark; now when neither is set (and stored at once)."""
        stored = None
        store = asset_state_store(self)
        if store is not None:
            try:
                stored = aware_datetime(await store.aget(WATERMARK_KEY), WATERMARK_KEY)
            except (ValueError, TypeError, KeyError) as exc:
                self.log.warning("Could not read the watermark from the asset's state store: %s", exc)
        candidates = [w for w in (self.since, stored) if w is not None]
        if candidates:
            return max(candidates)
        now = datetime.fromtimestamp(self._now(), timezone.utc) - timedelta(seconds=CLOCK_SKEW)
        await self._save_watermark(now)
        return now

    async def _save_watermark(self, since: datetime) -> None:
        store = asset_state_store(self)
        if store is None:
            return
        try:
            await store.aset(WATERMARK_KEY, since.isoformat())
        except (ValueError, TypeError, KeyError) as exc:
            self.log.warning("Could not store the watermark in the asset's state store: %s", exc)
