"""CallBatchTrigger: wait for a call batch in the triggerer, natively async.

Every poll goes through the hook's async path (httpx, one connection pool per event loop shared by
every trigger, the same retry policy and errors as the sync hook); the connection is looked up with
Airflow's async API. Nothing in :meth:`CallBatchTrigger.run` blocks the event loop, so a thousand
waiting batches cost one triggerer a few dozen keep-alive connections (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_cartesia.exceptions import CartesiaError
from airflow_provider_cartesia.get_provider_info import DEFAULT_CONN_ID
from airflow_provider_cartesia.models import WaitFor
from airflow_provider_cartesia.waiting import (
    DEFAULT_FAILURE_STATUSES,
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    DEFAULT_SUCCESS_STATUSES,
    BatchWatch,
    WaitCriteria,
    backoff_interval,
    timeout_message,
    trigger_event,
)

if TYPE_CHECKING:
    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
    from airflow_provider_cartesia.models import CallBatch


class CallBatchTrigger(BaseTrigger):
    """Poll a call batch until it settles, fails, or the deadline passes; yield exactly one event.

    Events (``status``, plus ``batch_id``, ``message`` and ``summary``, the batch's counts):
    ``success``, ``failed`` (a failure status), ``timeout`` (``end_time`` passed) and ``error``
    (401/403/404/400, or more than ``max_consecutive_failures`` failed polls in a row; ``retriable``
    tells which). The decisions are :mod:`airflow_provider_cartesia.waiting`'s, shared with the sensor.

    Polls start exactly ``poll_interval`` seconds apart (a poll slower than that is followed at once by
    the next). A batch whose ``scheduled_at`` lies ahead is next polled ``min(poll_interval, 60 s)``
    before that time. Rebuilt from :meth:`serialize` (a triggerer restart), it polls at once (or at
    ``first_poll_at``, while that is still ahead) and keeps the same absolute deadline.

    :param batch_id: the call batch (``acb_...``).
    :param cartesia_conn_id: the Airflow connection; only its id is stored, never the key.
    :param poll_interval: seconds between the starts of two polls.
    :param end_time: absolute deadline (``time.time()`` seconds); None waits without one.
    :param first_poll_at: when to poll first (``time.time()`` seconds); None or past: at once. The
        sensor sets it, having just polled, so that it does not poll twice in a row.
    :param exponential_backoff: double the interval after each poll, up to ``max_wait`` seconds.
    :param consecutive_failures: failed polls in a row already seen by the task before it deferred,
        so that the budget is the same as in the other modes.
    :param wait_for, success_statuses, failure_statuses, max_consecutive_failures: see
        :class:`~airflow_provider_cartesia.waiting.WaitCriteria`.
    """

    def __init__(
        self,
        batch_id: str,
        cartesia_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 60.0,
        end_time: float | None = None,
        wait_for: WaitFor = "finished",
        success_statuses: Collection[str] = DEFAULT_SUCCESS_STATUSES,
        failure_statuses: Collection[str] = DEFAULT_FAILURE_STATUSES,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        first_poll_at: float | None = None,
        exponential_backoff: bool = False,
        max_wait: float | None = None,
        consecutive_failures: int = 0,
    ) -> None:
        super().__init__()
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        self.batch_id = batch_id
        self.cartesia_conn_id = cartesia_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time) if end_time is not None else None
        self.criteria = WaitCriteria.of(wait_for, success_statuses, failure_statuses, max_consecutive_failures)
        self.first_poll_at = float(first_poll_at) if first_poll_at is not None else None
        self.exponential_backoff = bool(exponential_backoff)
        self.max_wait = float(max_wait) if max_wait else None
        self.consecutive_failures = int(consecutive_failures)

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
                **self.criteria.to_dict(),
            },
        )

    @cached_property
    def hook(self) -> CartesiaHook:
        """The hook, built on first use inside :meth:`run` (its async path looks the connection up)."""
        from airflow_provider_cartesia.hooks.cartesia import CartesiaHook

        return CartesiaHook(self.cartesia_conn_id)

    # Time, replaceable in tests (drive a simulated clock instead of sleeping).
    def _now(self) -> float:
        return time.time()

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _fetch(self, hook: CartesiaHook) -> CallBatch:
        """One read of the batch, through the hook's async path (never a blocking call)."""
        return await hook.aget_call_batch(self.batch_id)

    def _interval(self, polls_done: int) -> float:
        if self.exponential_backoff:
            return backoff_interval(self.poll_interval, polls_done, self.max_wait)
        return self.poll_interval

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self.hook
        watch = BatchWatch(self.batch_id, self.criteria, self.log)
        watch.consecutive_failures = self.consecutive_failures
        next_poll_at = self.first_poll_at if self.first_poll_at is not None else self._now()
        while True:
            # Poll when due, or at the deadline: like a sensor, look once more before timing out.
            due = next_poll_at if self.end_time is None else min(next_poll_at, self.end_time)
            delay = due - self._now()
            if delay > 0:
                await self._sleep(delay)
            started = self._now()
            try:
                batch = await self._fetch(hook)
            except CartesiaError as exc:
                verdict = watch.failed(exc)
            else:
                verdict = watch.observe(batch)
            if verdict.outcome != "waiting":
                yield TriggerEvent(trigger_event(verdict, self.batch_id))
                return
            if self.end_time is not None and self._now() >= self.end_time:
                yield TriggerEvent(
                    {
                        "status": "timeout",
                        "batch_id": self.batch_id,
                        "message": timeout_message(self.batch_id, watch.last_summary),
                        "summary": watch.last_summary,
                    }
                )
                return
            next_poll_at = started + watch.next_delay(self._interval(watch.polls), started)
