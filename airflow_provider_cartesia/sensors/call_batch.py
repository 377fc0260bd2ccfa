"""CallBatchSensor, and the wait on a call batch that it shares with the create operator."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseSensorOperator, PokeReturnValue

from airflow_provider_cartesia.api import DEFAULT_CONN_ID
from airflow_provider_cartesia.compat import (
    AirflowException,
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
    conf,
)
from airflow_provider_cartesia.exceptions import CartesiaError
from airflow_provider_cartesia.hooks.cartesia import CartesiaHookMixin
from airflow_provider_cartesia.links import CALL_BATCH_ID_XCOM_KEY, CallBatchLink
from airflow_provider_cartesia.models import WaitFor
from airflow_provider_cartesia.waiting import (
    BatchWatch,
    CallBatchWaitError,
    Verdict,
    WaitCriteria,
    scheduled_wait,
    verdict_from_event,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

WAITING_BATCH_ID_XCOM_KEY = "cartesia_waiting_batch_id"
"""XCom key of the batch a deferred wait resumes for (the create operator's part being waited for)."""
RESCHEDULE_RETRY_WAIT = 60.0
"""In reschedule mode, the longest wait in the worker before polling again after a failed poll."""
DEFERRAL_GRACE = 300.0
"""Seconds past the wait's deadline after which Airflow itself times the deferral out (triggerer down)."""


class CallBatchWaitMixin(CartesiaHookMixin, BaseOperator):
    """The wait on a call batch for any operator: a poke, poke-then-defer, resume, or a blocking loop.

    Declares the wait's parameters once (defaults from :class:`~airflow_provider_cartesia.waiting.WaitCriteria`).
    How every end maps to an exception is in docs/waiting.md.
    """

    def __init__(
        self,
        *,
        cartesia_conn_id: str = DEFAULT_CONN_ID,
        wait_for: WaitFor = WaitCriteria.wait_for,
        success_statuses: Collection[str] = WaitCriteria.success_statuses,
        failure_statuses: Collection[str] = WaitCriteria.failure_statuses,
        max_consecutive_failures: int = WaitCriteria.max_consecutive_failures,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cartesia_conn_id = cartesia_conn_id
        self.wait_criteria = WaitCriteria.of(wait_for, success_statuses, failure_statuses, max_consecutive_failures)
        self._watch: BatchWatch | None = None
        self._sleep: Callable[[float], None] = time.sleep  # replaced in tests

    def publish_batch(self, context: Context, batch_id: str, key: str = CALL_BATCH_ID_XCOM_KEY) -> None:
        """Push ``batch_id`` under ``key`` and the extra link's URL (before waiting or deferring)."""
        context["ti"].xcom_push(key=key, value=batch_id)
        CallBatchLink.persist(context, self.hook, batch_id)

    def watch(self, batch_id: str) -> BatchWatch:
        """This task's watch on ``batch_id`` (kept across pokes of one process)."""
        if self._watch is None or self._watch.batch_id != batch_id:
            agent_id = getattr(self, "agent_id", None)  # the sensor's argument or the create operator's agent
            self._watch = BatchWatch(batch_id, self.wait_criteria, self.log, agent_id=agent_id or None)
        return self._watch

    def poll_batch(self, batch_id: str) -> Verdict:
        """Read the batch once: the list's counters when cheaper, a GET to start, confirm an end or find it."""
        watch = self.watch(batch_id)
        try:
            if watch.reads_list():
                counters = self.hook.find_call_batch_counters(batch_id, watch.agent_id, watch.created_at)
                if not watch.needs_full_read(counters):
                    return watch.observe(counters)  # type: ignore[arg-type]
            batch = self.hook.get_call_batch_statuses(batch_id)
        except CartesiaError as exc:
            return watch.failed(exc)
        return watch.observe(batch)

    def conclude_wait(self, verdict: Verdict) -> dict[str, Any] | None:
        """The summary on success, None while waiting; raises for every other end."""
        if verdict.outcome == "waiting":
            return None
        if verdict.outcome == "success":
            self.log.info("%s", verdict.message)
            return verdict.summary
        if verdict.outcome == "timeout":
            raise AirflowSensorTimeout(verdict.message)
        if verdict.outcome == "error" and verdict.retriable:
            raise CallBatchWaitError(verdict.message)
        raise AirflowFailException(verdict.message)

    def poke_then_defer(
        self,
        batch_id: str,
        *,
        poll_interval: float,
        timeout: float,
        exponential_backoff: bool = False,
        max_wait: float | None = None,
    ) -> dict[str, Any]:
        """Poll once; when not settled, defer to the trigger with the absolute deadline now + ``timeout``."""
        # Imported here: airflow.triggers.base adds ~25 ms to every DAG file that only uses the sensor.
        from airflow_provider_cartesia.triggers.call_batch import CallBatchTrigger

        deadline = time.time() + timeout
        summary = self.conclude_wait(self.poll_batch(batch_id))
        if summary is not None:
            return summary
        watch = self.watch(batch_id)
        now = time.time()
        trigger = CallBatchTrigger(
            batch_id=batch_id,
            cartesia_conn_id=self.cartesia_conn_id,
            poll_interval=poll_interval,
            end_time=deadline,
            first_poll_at=now + watch.next_delay(poll_interval, now),
            exponential_backoff=exponential_backoff,
            max_wait=max_wait,
            consecutive_failures=watch.consecutive_failures,
            agent_id=watch.agent_id,
            batch_created_at=watch.created_at,
            criteria=self.wait_criteria.to_dict(),
        )
        # A backstop only: the trigger reports the deadline itself; this fires if no triggerer runs it.
        backstop = timedelta(seconds=max(deadline - now, 0.0) + DEFERRAL_GRACE)
        self.defer(trigger=trigger, method_name="execute_complete", timeout=backstop)

    def waited_batch_id(self, context: Context) -> str:
        """The batch a resumed wait is for: this instance's own XCom (``map_indexes``: not a mapped sibling's)."""
        ti = context["ti"]
        return str(ti.xcom_pull(task_ids=ti.task_id, key=WAITING_BATCH_ID_XCOM_KEY, map_indexes=ti.map_index) or "")

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Resume a deferred wait: check the event (fail closed), then end as a poke would have."""
        try:
            verdict = verdict_from_event(event, self.waited_batch_id(context))
        except ValueError as exc:
            raise AirflowException(str(exc)) from exc
        return self.conclude_wait(verdict)

    def wait_in_worker(self, batch_id: str, *, poll_interval: float, timeout: float) -> dict[str, Any]:
        """Poll in this worker until the batch settles or ``timeout`` seconds pass (operators, not sensors)."""
        deadline = time.monotonic() + timeout
        watch = self.watch(batch_id)
        while True:
            summary = self.conclude_wait(self.poll_batch(batch_id))
            if summary is not None:
                return summary
            now = time.monotonic()
            if now >= deadline:
                self.conclude_wait(watch.timed_out())
            delay = watch.next_delay(poll_interval, time.time())
            self._sleep(max(min(delay, deadline - now), 0.0))


class CallBatchSensor(CallBatchWaitMixin, BaseSensorOperator):
    """Wait until a Cartesia call batch settles; return its summary (counts, never recipients) as XCom.

    ``completed`` only means every recipient was *dispatched*: with ``wait_for="finished"`` (the
    default) the sensor also waits until every dispatched call has ended. A failure status raises
    :class:`~airflow.sdk.exceptions.AirflowFailException` (``soft_fail`` skips, in every mode alike).
    Failed polls (429, 5xx, network) are tolerated up to ``max_consecutive_failures`` in a row, then
    :class:`~airflow_provider_cartesia.waiting.CallBatchWaitError` lets ``retries`` apply; 401, 403,
    404 and 400 fail at once. ``deferrable=True`` pokes once, then defers with the deadline
    ``now + timeout``. How polls read the batch, and scheduled batches: docs/waiting.md.

    :param batch_id: the call batch to wait for (templated), e.g.
        ``"{{ ti.xcom_pull(task_ids='create_batch', key='cartesia_batch_id') }}"``.
    :param cartesia_conn_id: the Airflow connection of type ``cartesia`` (templated).
    :param wait_for: ``"finished"`` (every dispatched call ended) or ``"dispatched"`` (terminal status).
    :param success_statuses: terminal statuses that succeed (default ``("completed",)``).
    :param failure_statuses: terminal statuses that fail (default ``("failed", "cancelled")``).
    :param max_consecutive_failures: failed polls in a row tolerated before the wait fails (default 5).
    :param deferrable: defer to the triggerer between polls (default ``[operators] default_deferrable``).
    :param agent_id: the batch's agent, if known (templated): every poke then reads the agent's batch
        list (no recipients) from the first one on.
    """

    template_fields = ("batch_id", "cartesia_conn_id", "agent_id")
    operator_extra_links = (CallBatchLink(),)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        batch_id: str,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        agent_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.agent_id = agent_id
        self.deferrable = deferrable
        self._started: float | None = None

    def execute(self, context: Context) -> Any:
        self.publish_batch(context, self.batch_id)
        if self.deferrable:
            with self._ending_as_a_poke_would():
                return self.poke_then_defer(
                    self.batch_id,
                    poll_interval=self.poke_interval,
                    timeout=self.timeout,
                    exponential_backoff=self.exponential_backoff,
                    max_wait=self.max_wait.total_seconds() if self.max_wait else None,
                )
        self._started = time.time()
        if self.reschedule:
            first = context["ti"].get_first_reschedule_date(context)
            self._started = first.timestamp() if first else self._started
        try:
            return super().execute(context)
        except AirflowRescheduleException as exc:
            # Not polled before shortly ahead of a future scheduled_at: reschedule later than Airflow would.
            pause = self._scheduled_pause()
            later = datetime.fromtimestamp(time.time() + (pause or 0), timezone.utc)
            if pause is None or later <= exc.reschedule_date:
                raise
            raise AirflowRescheduleException(later) from None

    def waited_batch_id(self, context: Context) -> str:
        return self.batch_id

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any] | None:
        with self._ending_as_a_poke_would():
            return super().execute_complete(context, event)

    @contextmanager
    def _ending_as_a_poke_would(self) -> Iterator[None]:
        """``soft_fail`` and ``never_fail`` as BaseSensorOperator.execute applies them to a poke's exceptions."""
        try:
            yield
        except (AirflowFailException, CallBatchWaitError) as exc:
            if self.never_fail or (self.soft_fail and isinstance(exc, AirflowFailException)):
                raise AirflowSkipException(f"Skipping: {exc}") from exc
            raise

    def poke(self, context: Context) -> PokeReturnValue:
        summary = self.conclude_wait(self._poll())
        pause = self._scheduled_pause() if summary is None and not self.reschedule else None
        if pause:
            self._sleep(pause)  # poke mode: until shortly before scheduled_at, then look again
            summary = self.conclude_wait(self._poll())
        return PokeReturnValue(is_done=summary is not None, xcom_value=summary)

    def _poll(self) -> Verdict:
        verdict = self.poll_batch(self.batch_id)
        # Nothing survives from one reschedule poke to the next: repeat a failed poll here, within the budget.
        while self.reschedule and verdict.outcome == "waiting" and self.watch(self.batch_id).consecutive_failures:
            self._sleep(min(self.poke_interval, RESCHEDULE_RETRY_WAIT))
            verdict = self.poll_batch(self.batch_id)
        return verdict

    def _scheduled_pause(self) -> float | None:
        """Seconds until shortly before a future ``scheduled_at`` (capped at the timeout), or None."""
        now = time.time()
        wait = scheduled_wait(self.watch(self.batch_id).last_batch, self.poke_interval, now)
        if wait is None:
            return None
        remaining = self.timeout - (now - (self._started or now))
        self.log.info("Call batch %s is scheduled for later; next poke in %.0f s", self.batch_id, min(wait, remaining))
        return max(min(wait, remaining), 0.0)
