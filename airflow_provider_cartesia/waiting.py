"""Waiting for a call batch to settle: what the sensor, the trigger and the create operator share.

A wait is a loop of polls. Only the I/O differs between the places that run it (the sync hook in a
worker, the async hook in the triggerer); everything decided about an answer lives here, so poke,
reschedule and deferrable modes cannot drift apart:

- :class:`WaitCriteria`: when the wait is over and how (``wait_for``, the success and failure
  statuses, the budget of consecutive failed polls). JSON-safe: the trigger serializes it.
- :class:`BatchWatch`: one wait's memory (consecutive failures, statuses already warned about, the
  last batch seen). :meth:`~BatchWatch.observe` turns a batch into a :class:`Verdict` through
  :func:`~airflow_provider_cartesia.models.classify_batch`; :meth:`~BatchWatch.failed` does the
  same for a failed poll; :func:`scheduled_wait` says when a batch scheduled for later is worth
  polling again.
- :class:`CallBatchWaitMixin`: the operator side. ``poll_batch`` + ``conclude_wait`` are one
  poke; ``poke_then_defer`` polls once and hands the rest to
  :class:`~airflow_provider_cartesia.triggers.call_batch.CallBatchTrigger`; ``execute_complete``
  validates the trigger's event against :data:`TRIGGER_EVENT_STATUSES` (fail closed) and ends the
  task exactly as a poke would have; ``wait_in_worker`` is the blocking loop for an operator
  that is not a sensor.

How a wait ends, identically in every mode:

===============================  =====================================================================
batch settled, success status    the summary (:meth:`CallBatch.summary`) is the task's return value
batch settled, failure status    :class:`AirflowFailException` with the counts (``soft_fail`` skips)
401, 403, 404, 400, bad config   :class:`AirflowFailException` saying what to check
transient errors, budget spent   :class:`CallBatchWaitError` (not an Airflow exception: ``retries`` apply)
deadline passed                  :class:`AirflowSensorTimeout` (``soft_fail`` skips)
===============================  =====================================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, NoReturn

from airflow_provider_cartesia.api import DEFAULT_CONN_ID
from airflow_provider_cartesia.compat import AirflowException, AirflowFailException, AirflowSensorTimeout
from airflow_provider_cartesia.exceptions import (
    CartesiaError,
    is_permanent,
)
from airflow_provider_cartesia.links import CALL_BATCH_ID_XCOM_KEY
from airflow_provider_cartesia.models import BatchStatus, CallBatch, WaitFor, classify_batch

if TYPE_CHECKING:
    import logging

    from airflow.sdk import BaseOperator, Context

    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook

    _OperatorBase = BaseOperator
else:
    _OperatorBase = object

TRIGGER_EVENT_STATUSES = frozenset({"success", "failed", "timeout", "error"})
"""Every status a :class:`CallBatchTrigger` event may carry; anything else fails the task."""
WAIT_FOR_VALUES = ("finished", "dispatched")
DEFAULT_SUCCESS_STATUSES = (BatchStatus.COMPLETED,)
DEFAULT_FAILURE_STATUSES = (BatchStatus.FAILED, BatchStatus.CANCELLED)
DEFAULT_MAX_CONSECUTIVE_FAILURES = 5
MAX_SCHEDULED_LEAD = 60.0
"""A batch scheduled for later is polled again ``min(poll_interval, 60 s)`` before its ``scheduled_at``."""
DEFERRAL_GRACE = 300.0
"""Seconds past the wait's deadline after which Airflow itself times the deferral out (triggerer down)."""

Outcome = Literal["waiting", "success", "failure", "error"]


class CallBatchWaitError(CartesiaError):
    """Polling the batch kept failing (429, 5xx, network) beyond ``max_consecutive_failures``.

    Deliberately not an Airflow exception: the task fails and its ``retries`` apply (a retry starts
    a fresh wait), in every mode alike.
    """


def is_fatal(error: BaseException) -> bool:
    """Whether asking again cannot fix a failed poll: :func:`~airflow_provider_cartesia.exceptions.is_permanent`."""
    return is_permanent(error)


def scheduled_wait(batch: CallBatch | None, poll_interval: float, now: float) -> float | None:
    """Seconds to wait before polling a batch whose ``scheduled_at`` lies ahead, or None to poll as usual.

    Nothing happens to a batch before its ``scheduled_at``, so the next poll is shortly before it:
    ``min(poll_interval, 60 s)`` ahead. None when that moment is no further away than one interval.
    """
    if batch is None or batch.scheduled_at is None:
        return None
    when = batch.scheduled_at
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    wait = when.timestamp() - min(poll_interval, MAX_SCHEDULED_LEAD) - now
    return wait if wait > poll_interval else None


def backoff_interval(poll_interval: float, polls_done: int, max_wait: float | None = None) -> float:
    """The deferred wait's ``exponential_backoff``: the interval doubles after every poll, up to ``max_wait``."""
    interval = poll_interval * 2 ** max(polls_done - 1, 0)
    return min(interval, max_wait) if max_wait else interval


@dataclass(frozen=True)
class WaitCriteria:
    """When a wait on a batch is over and how; validated once, when the DAG is parsed.

    :param wait_for: ``"finished"``: the status is terminal **and** every dispatched call has ended
        (Cartesia says ``completed`` as soon as the last recipient is *dispatched*).
        ``"dispatched"``: a terminal status is enough.
    :param success_statuses: terminal statuses that end the wait successfully.
    :param failure_statuses: terminal statuses that fail the task. Any other status (a newer, unknown
        one included) keeps the wait going.
    :param max_consecutive_failures: failed polls in a row (each after the hook's own retries) that
        are tolerated; one more fails the wait. Any successful poll resets the count.
    """

    wait_for: WaitFor = "finished"
    success_statuses: tuple[str, ...] = DEFAULT_SUCCESS_STATUSES
    failure_statuses: tuple[str, ...] = DEFAULT_FAILURE_STATUSES
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES

    @classmethod
    def of(
        cls,
        wait_for: WaitFor = "finished",
        success_statuses: Collection[str] = DEFAULT_SUCCESS_STATUSES,
        failure_statuses: Collection[str] = DEFAULT_FAILURE_STATUSES,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    ) -> WaitCriteria:
        """Criteria from an operator's arguments (any collection of statuses; a bare string is refused)."""
        for name, value in (("success_statuses", success_statuses), ("failure_statuses", failure_statuses)):
            if isinstance(value, str) or not isinstance(value, Collection):
                raise ValueError(f"{name} must be a list of statuses such as ['completed'], got {value!r}")
        return cls(wait_for, tuple(success_statuses), tuple(failure_statuses), max_consecutive_failures)

    def __post_init__(self) -> None:
        if self.wait_for not in WAIT_FOR_VALUES:
            raise ValueError(f"wait_for must be one of {WAIT_FOR_VALUES}, got {self.wait_for!r}")
        for name in ("success_statuses", "failure_statuses"):
            object.__setattr__(self, name, tuple(str(s) for s in getattr(self, name)))
        if not self.success_statuses:
            raise ValueError("success_statuses must name at least one status (e.g. 'completed')")
        both = sorted(set(self.success_statuses) & set(self.failure_statuses))
        if both:
            raise ValueError(f"statuses {both} are in both success_statuses and failure_statuses")
        if isinstance(self.max_consecutive_failures, bool) or not isinstance(self.max_consecutive_failures, int):
            raise ValueError(f"max_consecutive_failures must be an integer, got {self.max_consecutive_failures!r}")
        if self.max_consecutive_failures < 0:
            raise ValueError("max_consecutive_failures must be 0 or more")

    def classify(self, batch: CallBatch) -> str:
        """The shared decision, :func:`~airflow_provider_cartesia.models.classify_batch`, with these criteria."""
        return classify_batch(
            batch,
            wait_for=self.wait_for,
            success_statuses=self.success_statuses,
            failure_statuses=self.failure_statuses,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe keyword arguments (lists, not tuples)."""
        return {
            "wait_for": self.wait_for,
            "success_statuses": list(self.success_statuses),
            "failure_statuses": list(self.failure_statuses),
            "max_consecutive_failures": self.max_consecutive_failures,
        }


class Verdict(NamedTuple):
    """What one poll means for the wait."""

    outcome: Outcome
    message: str = ""
    summary: dict[str, Any] | None = None
    """The latest batch summary (counts only), when a batch was ever read."""
    retriable: bool = False
    """For ``error``: whether a later, fresh wait might succeed (the failure budget was spent)."""


class BatchWatch:
    """One wait on one batch: what it remembers between polls. No I/O; the caller fetches."""

    def __init__(
        self,
        batch_id: str,
        criteria: WaitCriteria,
        log: logging.Logger | Any,
        agent_id: str | None = None,
        created_at: datetime | None = None,
    ) -> None:
        self.batch_id = batch_id
        self.criteria = criteria
        self.log = log
        self.agent_id = agent_id
        """The batch's agent, from the first read: whose list shows the batch's counters."""
        self.created_at = created_at
        """When the batch was created, from the first read: where a walk of the list may stop."""
        self.polls = 0
        self.consecutive_failures = 0
        self.last_batch: CallBatch | None = None
        """The last batch read, counters only: recipients are never kept between polls."""
        self.last_summary: dict[str, Any] | None = None
        self._warned_statuses: set[str] = set()

    def reads_list(self) -> bool:
        """Whether the next poll reads the list (counters) rather than the batch with every recipient.

        Once the agent is known, unless the batch is known to be small: then its GET is smaller than a
        page of the list (:data:`~airflow_provider_cartesia.polling.LIST_MIN_RECIPIENTS`).
        """
        from airflow_provider_cartesia.polling import LIST_MIN_RECIPIENTS

        if self.agent_id is None:
            return False
        return self.last_batch is None or self.last_batch.total_calls_scheduled >= LIST_MIN_RECIPIENTS

    def needs_full_read(self, counters: CallBatch | None) -> bool:
        """Whether the list's answer must be confirmed by a GET: the batch is missing from the list, or
        its counters say the wait is over (the GET is authoritative and gives the recipient counts)."""
        return counters is None or self.criteria.classify(counters) != "waiting"

    def observe(self, batch: CallBatch) -> Verdict:
        """A poll answered: log progress, then classify with the shared decision."""
        self.polls += 1
        self.consecutive_failures = 0
        self.agent_id = self.agent_id or batch.agent_id
        self.created_at = self.created_at or batch.created_at
        self.last_summary = batch.summary()
        self.last_batch = batch if batch.recipients is None else batch.model_copy(update={"recipients": None})
        outcome = self.criteria.classify(batch)
        status = batch.status or ""
        line = batch.progress_line()
        if outcome == "waiting" and status in self.criteria.success_statuses + self.criteria.failure_statuses:
            running = batch.total_calls_dispatched - batch.total_calls_finished
            calls = f"{running:,} call" + ("s" if running != 1 else "")
            line += f" (dispatch is over; waiting for {calls} still ringing or talking)"
        self.log.info("%s", line)
        known = BatchStatus.KNOWN | set(self.criteria.success_statuses) | set(self.criteria.failure_statuses)
        if status not in known and status not in self._warned_statuses:
            self._warned_statuses.add(status)
            self.log.warning(
                "Call batch %s has status %r, which this provider does not know; still waiting. Add it to "
                "success_statuses or failure_statuses if it should end the wait.",
                self.batch_id,
                status,
            )
        summary = self.last_summary
        if outcome == "success":
            return Verdict("success", f"Call batch {line}", summary)
        if outcome == "failure":
            return Verdict("failure", failure_message(batch, self.criteria), summary)
        return Verdict("waiting", line, summary)

    def failed(self, error: CartesiaError) -> Verdict:
        """A poll failed after the hook's own retries: fatal at once, or counted against the budget."""
        self.polls += 1
        if is_fatal(error):
            return Verdict("error", f"Cannot wait for call batch {self.batch_id}: {error}", self.last_summary)
        self.consecutive_failures += 1
        budget = self.criteria.max_consecutive_failures
        if self.consecutive_failures > budget:
            return Verdict(
                "error",
                f"Gave up waiting for call batch {self.batch_id}: {self.consecutive_failures} polls in a row "
                f"failed (max_consecutive_failures={budget}). Last error: {error}",
                self.last_summary,
                retriable=True,
            )
        self.log.warning(
            "Polling call batch %s failed (%d in a row; the wait fails after %d): %s",
            self.batch_id,
            self.consecutive_failures,
            budget + 1,
            error,
        )
        return Verdict("waiting", str(error), self.last_summary)

    def next_delay(self, poll_interval: float, now: float) -> float:
        """Seconds until the next poll: ``poll_interval``, or until shortly before a future ``scheduled_at``."""
        wait = scheduled_wait(self.last_batch, poll_interval, now)
        if wait is None:
            return poll_interval
        self.log.info(
            "Call batch %s is scheduled for %s; next poll in %.0f s",
            self.batch_id,
            self.last_batch.scheduled_at.isoformat() if self.last_batch and self.last_batch.scheduled_at else "?",
            wait,
        )
        return wait


def failure_message(batch: CallBatch, criteria: WaitCriteria) -> str:
    """Why the wait failed, with the batch's counts (never a recipient)."""
    counts = ", ".join(f"{n:,} {s}" for s, n in sorted(batch.recipient_status_counts().items()))
    return (
        f"Call batch {batch.id} ended with status {batch.status!r}, one of failure_statuses "
        f"{list(criteria.failure_statuses)}: {batch.total_calls_finished:,} of {batch.total_calls_scheduled:,} calls "
        f"finished, {batch.total_calls_dispatched:,} dispatched"
        + (f"; recipients: {counts}" if counts else "")
        + (f"; retried {batch.retry_count} times" if batch.retry_count else "")
    )


def timeout_message(batch_id: str, summary: Mapping[str, Any] | None) -> str:
    last = ""
    if summary:
        last = (
            f"; last seen {summary.get('status')}: {summary.get('total_calls_finished', 0):,} of "
            f"{summary.get('total_calls_scheduled', 0):,} calls finished, "
            f"{summary.get('total_calls_dispatched', 0):,} dispatched"
        )
    return f"Call batch {batch_id} did not settle before the wait's deadline (the sensor's timeout){last}"


_EVENT_STATUSES: dict[Outcome, str] = {"success": "success", "failure": "failed", "error": "error"}
_EVENT_OUTCOMES: dict[str, Outcome] = {status: outcome for outcome, status in _EVENT_STATUSES.items()}


def trigger_event(verdict: Verdict, batch_id: str) -> dict[str, Any]:
    """The payload a trigger yields for a verdict that ends the wait (not for ``waiting``)."""
    status = _EVENT_STATUSES[verdict.outcome]
    event: dict[str, Any] = {
        "status": status,
        "batch_id": batch_id,
        "message": verdict.message,
        "summary": verdict.summary,
    }
    if status == "error":
        event["retriable"] = verdict.retriable
    return event


def validate_trigger_event(event: Any, batch_id: str) -> dict[str, Any]:
    """The event a deferred wait resumed with, if well-formed; fails closed otherwise.

    The event crosses the triggerer/worker boundary through the metadata database: ``None``, a status
    not in :data:`TRIGGER_EVENT_STATUSES`, another batch's event or a success without a summary
    raise instead of falling through to success.
    """
    if not isinstance(event, Mapping):
        raise AirflowException(
            f"The wait for call batch {batch_id} resumed without a trigger event (got {type(event).__name__}); "
            "failing rather than assuming success"
        )
    status = event.get("status")
    if status not in TRIGGER_EVENT_STATUSES:
        raise AirflowException(
            f"The wait for call batch {batch_id} resumed with an unknown event status {status!r} "
            f"(expected one of {sorted(TRIGGER_EVENT_STATUSES)}); failing rather than assuming success"
        )
    if event.get("batch_id") != batch_id:
        raise AirflowException(
            f"The wait for call batch {batch_id} resumed with an event for batch {event.get('batch_id')!r}"
        )
    if status == "success" and not isinstance(event.get("summary"), Mapping):
        raise AirflowException(f"The wait for call batch {batch_id} resumed with a success event without a summary")
    return dict(event)


class CallBatchWaitMixin(_OperatorBase):
    """The wait on a call batch, for any operator: one poke, poke-then-defer, resume, or a blocking loop.

    The host class sets ``cartesia_conn_id`` and ``wait_criteria`` (a :class:`WaitCriteria`) in its
    ``__init__``. :class:`~airflow_provider_cartesia.sensors.call_batch.CallBatchSensor` uses
    ``poll_batch`` + ``conclude_wait`` as its ``poke`` and ``poke_then_defer`` when deferrable. An
    operator that first creates the batch (``wait_for_completion=True``) calls, after creating it::

        CallBatchLink.persist(context, batch.id)
        if self.deferrable:
            return self.poke_then_defer(batch.id, poll_interval=..., timeout=...)
        return self.wait_in_worker(batch.id, poll_interval=..., timeout=...)

    and inherits ``execute_complete``. Both return the batch summary, or raise as the table in this
    module's docstring says.
    """

    cartesia_conn_id: str = DEFAULT_CONN_ID
    wait_criteria: WaitCriteria = WaitCriteria()

    @cached_property
    def hook(self) -> CartesiaHook:
        """The Cartesia hook (built on first use; the connection is looked up once)."""
        from airflow_provider_cartesia.hooks.cartesia import CartesiaHook

        return CartesiaHook(self.cartesia_conn_id)

    def batch_watch(self, batch_id: str) -> BatchWatch:
        """This task's :class:`BatchWatch` for ``batch_id`` (kept across pokes of one process)."""
        watch: BatchWatch | None = self.__dict__.get("_cartesia_batch_watch")
        if watch is None or watch.batch_id != batch_id:
            watch = BatchWatch(batch_id, self.wait_criteria, self.log, agent_id=self.known_agent_id())
            self.__dict__["_cartesia_batch_watch"] = watch
        return watch

    def known_agent_id(self) -> str | None:
        """The batch's agent when the task knows it before the first read: the host's ``agent_id``
        (the sensor's argument, or the agent the create operator used)."""
        agent_id = getattr(self, "agent_id", None)
        return agent_id if isinstance(agent_id, str) and agent_id else None

    def poll_batch(self, batch_id: str) -> Verdict:
        """Read the batch once (sync hook, with its retries) and judge the answer.

        The list's counters when :meth:`BatchWatch.reads_list`; a GET of the batch (every recipient)
        for the first read, a small batch, a batch the list does not show, or to confirm an end.
        """
        watch = self.batch_watch(batch_id)
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
        """The summary when the wait succeeded, None while waiting; raises for every other end."""
        if verdict.outcome == "waiting":
            return None
        if verdict.outcome == "success":
            self.log.info("%s", verdict.message)
            return verdict.summary
        if verdict.outcome == "error" and verdict.retriable:
            raise CallBatchWaitError(verdict.message)
        raise AirflowFailException(verdict.message)

    def wait_timed_out(self, message: str) -> NoReturn:
        """End a wait whose deadline passed. Override to change the exception."""
        raise AirflowSensorTimeout(message)

    def poke_then_defer(
        self,
        batch_id: str,
        *,
        poll_interval: float,
        timeout: float,
        exponential_backoff: bool = False,
        max_wait: float | None = None,
    ) -> dict[str, Any]:
        """Poll once; when not settled, defer to the trigger with an absolute deadline of now + ``timeout``."""
        deadline = time.time() + timeout
        watch = self.batch_watch(batch_id)
        summary = self.conclude_wait(self.poll_batch(batch_id))
        if summary is not None:
            return summary
        now = time.time()
        first_poll_at = now + watch.next_delay(poll_interval, now)
        self.defer_wait(
            batch_id,
            poll_interval=poll_interval,
            deadline=deadline,
            first_poll_at=first_poll_at,
            exponential_backoff=exponential_backoff,
            max_wait=max_wait,
        )

    def defer_wait(
        self,
        batch_id: str,
        *,
        poll_interval: float,
        deadline: float,
        first_poll_at: float | None = None,
        exponential_backoff: bool = False,
        max_wait: float | None = None,
    ) -> NoReturn:
        """Hand the wait to :class:`CallBatchTrigger`; the task resumes in :meth:`execute_complete`."""
        from airflow_provider_cartesia.triggers.call_batch import CallBatchTrigger

        trigger = CallBatchTrigger(
            batch_id=batch_id,
            cartesia_conn_id=self.cartesia_conn_id,
            poll_interval=poll_interval,
            end_time=deadline,
            first_poll_at=first_poll_at,
            exponential_backoff=exponential_backoff,
            max_wait=max_wait,
            consecutive_failures=self.batch_watch(batch_id).consecutive_failures,
            agent_id=self.batch_watch(batch_id).agent_id,
            batch_created_at=self.batch_watch(batch_id).created_at,
            **self.wait_criteria.to_dict(),
        )
        # A backstop only: the trigger itself reports the deadline; this fires if no triggerer runs it.
        backstop = timedelta(seconds=max(deadline - time.time(), 0.0) + DEFERRAL_GRACE)
        self.defer(trigger=trigger, method_name="execute_complete", timeout=backstop)

    def waited_batch_id(self, context: Context) -> str:
        """The batch this task waits for, when it resumes: the id it published for its extra link.

        (Not a ``defer(kwargs=...)`` value: ``dag.test()`` replaces those with the event on 3.3.
        ``map_indexes`` is this instance's own: without it Airflow returns every mapped sibling's id.)
        """
        ti = context["ti"]
        return str(ti.xcom_pull(task_ids=ti.task_id, key=CALL_BATCH_ID_XCOM_KEY, map_indexes=ti.map_index) or "")

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Resume a deferred wait: validate the event (fail closed), then end as a poke would have."""
        batch_id = self.waited_batch_id(context)
        checked = validate_trigger_event(event, batch_id)
        status = checked["status"]
        summary = checked.get("summary")
        if status == "timeout":
            self.wait_timed_out(str(checked.get("message") or timeout_message(batch_id, summary)))
        outcome = _EVENT_OUTCOMES[status]
        verdict = Verdict(outcome, str(checked.get("message", "")), summary, bool(checked.get("retriable")))
        return self.conclude_wait(verdict)

    def wait_in_worker(
        self, batch_id: str, *, poll_interval: float, timeout: float, sleep: Callable[[float], None] = time.sleep
    ) -> dict[str, Any]:
        """Poll in this worker until the batch settles or ``timeout`` seconds pass (operators, not sensors)."""
        deadline = time.monotonic() + timeout
        watch = self.batch_watch(batch_id)
        while True:
            summary = self.conclude_wait(self.poll_batch(batch_id))
            if summary is not None:
                return summary
            now = time.monotonic()
            if now >= deadline:
                self.wait_timed_out(timeout_message(batch_id, watch.last_summary))
            delay = watch.next_delay(poll_interval, time.time())
            sleep(max(min(delay, deadline - now), 0.0))
