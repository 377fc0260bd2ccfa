"""CallBatchTrigger: wait for a call batch in the triggerer, natively async.

Polls go through the hook's async path; once the agent is known, through the event loop's shared
:class:`~airflow_provider_cartesia.polling.BatchListPoller` (see docs/waiting.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_cartesia.api import DEFAULT_CONN_ID
from airflow_provider_cartesia.exceptions import CartesiaError
from airflow_provider_cartesia.hooks.cartesia import CartesiaHookMixin
from airflow_provider_cartesia.models import aware_datetime
from airflow_provider_cartesia.polling import BatchListPoller, poller_for
from airflow_provider_cartesia.waiting import BatchWatch, Verdict, WaitCriteria, backoff_interval, trigger_event

if TYPE_CHECKING:
    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
    from airflow_provider_cartesia.models import CallBatch


class CallBatchTrigger(CartesiaHookMixin, BaseTrigger):
    """Poll a call batch until it settles, fails, or the deadline passes; yield exactly one event.

    The event's ``status`` is the wait's outcome (``success``, ``failure``, ``error``, ``timeout``),
    with ``batch_id``, ``message``, ``summary`` (counts) and ``retriable``. Polls start
    ``poll_interval`` seconds apart; rebuilt from :meth:`serialize` it keeps the same deadline.
    Its keyword arguments are internal (set by the sensor and the create operator).

    :param end_time: absolute deadline (``time.time()`` seconds); None waits without one.
    :param first_poll_at: when to poll first; None or past: at once (the task just polled).
    :param consecutive_failures: failed polls in a row the task saw before deferring (one budget).
    :param agent_id: the batch's agent, when known; the first GET tells it otherwise.
    :param batch_created_at: when the batch was created, so that the list walk can stop early.
    :param criteria: :meth:`WaitCriteria.to_dict <airflow_provider_cartesia.waiting.WaitCriteria.to_dict>`.
    """

    def __init__(
        self,
        batch_id: str,
        cartesia_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 60.0,
        end_time: float | None = None,
        first_poll_at: float | None = None,
        exponential_backoff: bool = False,
        max_wait: float | None = None,
        consecutive_failures: int = 0,
        agent_id: str | None = None,
        batch_created_at: datetime | str | None = None,
        criteria: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        self.batch_id = batch_id
        self.cartesia_conn_id = cartesia_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time) if end_time is not None else None
        self.criteria = WaitCriteria.of(**(criteria or {}))
        self.first_poll_at = float(first_poll_at) if first_poll_at is not None else None
        self.exponential_backoff = bool(exponential_backoff)
        self.max_wait = float(max_wait) if max_wait else None
        self.consecutive_failures = int(consecutive_failures)
        self.agent_id = agent_id or None
        self.batch_created_at = aware_datetime(batch_created_at, "batch_created_at")
        self._poller: BatchListPoller | None = None
        self._poller_token = 0

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and keyword arguments, as stored in the metadata database: ids and settings only."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "batch_id": self.batch_id,
                "cartesia_conn_id": self.cartesia_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "first_poll_at": self.first_poll_at,
                "exponential_backoff": self.exponential_backoff,
                "max_wait": self.max_wait,
                "consecutive_failures": self.consecutive_failures,
                "agent_id": self.agent_id,
                "batch_created_at": self.batch_created_at.isoformat() if self.batch_created_at else None,
                "criteria": self.criteria.to_dict(),
            },
        )

    # Time, replaceable in tests (drive a simulated clock instead of sleeping).
    def _now(self) -> float:
        return time.time()

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _fetch(self, hook: CartesiaHook) -> CallBatch:
        """One read of the batch (recipients' statuses only), on the hook's async path."""
        return await hook.aget_call_batch_statuses(self.batch_id)

    async def _poll(self, hook: CartesiaHook, watch: BatchWatch, urgent: bool) -> tuple[Verdict, float | None]:
        """One poll (the shared walk's counters; a GET to confirm an end): the verdict, when the list was read."""
        read_at = None
        try:
            if watch.agent_id is not None:
                if self._poller is None:
                    self._poller = poller_for(
                        hook.alist_call_batch_page, self.cartesia_conn_id, watch.agent_id, self._now, self._sleep
                    )
                    self._poller_token = self._poller.join(self.poll_interval)
                counters, read_at = await self._poller.read(self.batch_id, watch.created_at, urgent=urgent)
                if not watch.needs_full_read(counters):
                    return watch.observe(counters), read_at  # type: ignore[arg-type]
            batch = await self._fetch(hook)
        except CartesiaError as exc:
            return watch.failed(exc), read_at
        return watch.observe(batch), read_at

    def _leave_poller(self) -> None:
        if self._poller is not None:
            self._poller.leave(self._poller_token)
            self._poller = None

    def _interval(self, polls_done: int) -> float:
        if self.exponential_backoff:
            return backoff_interval(self.poll_interval, polls_done, self.max_wait)
        return self.poll_interval

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            async for event in self._wait():
                yield event
        finally:
            self._leave_poller()  # ended, cancelled or its loop closing: the poller forgets this wait

    async def _wait(self) -> AsyncIterator[TriggerEvent]:
        hook = self.hook
        watch = BatchWatch(self.batch_id, self.criteria, self.log, self.agent_id, self.batch_created_at)
        watch.consecutive_failures = self.consecutive_failures
        next_poll_at = self.first_poll_at if self.first_poll_at is not None else self._now()
        while True:
            # Poll when due, or at the deadline: like a sensor, look once more before timing out.
            at_deadline = self.end_time is not None and next_poll_at >= self.end_time
            due = self.end_time if at_deadline and self.end_time is not None else next_poll_at
            delay = due - self._now()
            if delay > 0:
                await self._sleep(delay)
            started = self._now()
            verdict, read_at = await self._poll(hook, watch, urgent=at_deadline)
            if read_at is not None:
                started = read_at  # in step with the shared list walk
            if verdict.outcome == "waiting" and self.end_time is not None and self._now() >= self.end_time:
                verdict = watch.timed_out()
            if verdict.outcome != "waiting":
                self._leave_poller()
                yield TriggerEvent(trigger_event(verdict, self.batch_id))
                return
            next_poll_at = started + watch.next_delay(self._interval(watch.polls), started)
