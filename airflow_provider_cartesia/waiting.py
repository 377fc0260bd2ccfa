"""The decisions of a wait on a call batch, shared by the sensor, the trigger, the operators and the CLI.

Pure (no Airflow, no I/O): the caller fetches, this module judges. One vocabulary end to end: a
poll's :class:`Verdict`, the trigger's event ``status`` and the resumed task all say ``waiting``,
``success``, ``failure``, ``error`` or ``timeout`` (see docs/waiting.md).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from airflow_provider_cartesia.exceptions import CartesiaError, is_permanent
from airflow_provider_cartesia.models import BatchStatus, CallBatch, WaitFor
from airflow_provider_cartesia.polling import LIST_MIN_RECIPIENTS

Outcome = Literal["waiting", "success", "failure", "error", "timeout"]
EVENT_STATUSES = frozenset({"success", "failure", "error", "timeout"})
"""Every ``status`` a trigger event may carry: the outcomes that end a wait. Anything else fails the task."""
WAIT_FOR_VALUES = ("finished", "dispatched")
MAX_SCHEDULED_LEAD = 60.0
"""A batch scheduled for later is polled again ``min(poll_interval, 60 s)`` before its ``scheduled_at``."""


class CallBatchWaitError(CartesiaError):
    """Polling kept failing (429, 5xx, network) beyond ``max_consecutive_failures``.

    Not an Airflow exception, so the task's ``retries`` apply (a retry starts a fresh wait).
    """


def scheduled_wait(batch: CallBatch | None, poll_interval: float, now: float) -> float | None:
    """Seconds until shortly before a future ``scheduled_at``, or None when that is within one interval."""
    if batch is None or batch.scheduled_at is None:
        return None
    wait = batch.scheduled_at.timestamp() - min(poll_interval, MAX_SCHEDULED_LEAD) - now
    return wait if wait > poll_interval else None


def backoff_interval(poll_interval: float, polls_done: int, max_wait: float | None = None) -> float:
    """The deferred wait's ``exponential_backoff``: the interval doubles after every poll, up to ``max_wait``."""
    interval = poll_interval * 2 ** max(polls_done - 1, 0)
    return min(interval, max_wait) if max_wait else interval


@dataclass(frozen=True)
class WaitCriteria:
    """When a wait is over and how; validated when the DAG is parsed, JSON-safe for the trigger.

    :param wait_for: ``"finished"``: a terminal status **and** every dispatched call ended (Cartesia
        says ``completed`` once the last recipient is *dispatched*). ``"dispatched"``: the status alone.
    :param success_statuses: terminal statuses that end the wait successfully.
    :param failure_statuses: terminal statuses that fail the task; any other status keeps waiting.
    :param max_consecutive_failures: failed polls in a row tolerated; any answered poll resets the count.
    """

    wait_for: WaitFor = "finished"
    success_statuses: tuple[str, ...] = (BatchStatus.COMPLETED,)
    failure_statuses: tuple[str, ...] = (BatchStatus.FAILED, BatchStatus.CANCELLED)
    max_consecutive_failures: int = 5

    @classmethod
    def of(
        cls,
        wait_for: WaitFor = wait_for,
        success_statuses: Collection[str] = success_statuses,
        failure_statuses: Collection[str] = failure_statuses,
        max_consecutive_failures: int = max_consecutive_failures,
    ) -> WaitCriteria:
        """Criteria from user arguments: any collection of statuses, but not a bare string."""
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

    def classify(self, batch: CallBatch) -> Outcome:
        """``waiting``, ``success`` or ``failure``: the one decision every wait shares.

        A status in neither list (an unknown, newer one included) keeps the wait going.
        """
        status = batch.status or ""
        if status not in self.success_statuses and status not in self.failure_statuses:
            return "waiting"
        if self.wait_for == "finished" and not batch.all_dispatched_calls_finished:
            return "waiting"
        return "success" if status in self.success_statuses else "failure"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe keyword arguments (lists, not tuples)."""
        return {
            "wait_for": self.wait_for,
            "success_statuses": list(self.success_statuses),
            "failure_statuses": list(self.failure_statuses),
            "max_consecutive_failures": self.max_consecutive_failures,
        }


class Verdict(NamedTuple):
    """What one poll (or a trigger event) means for the wait."""

    outcome: Outcome
    message: str = ""
    summary: dict[str, Any] | None = None
    """The latest batch summary (counts only), when a batch was ever read."""
    retriable: bool = False
    """For ``error``: whether a fresh wait might succeed (the failure budget was spent)."""


class BatchWatch:
    """One wait on one batch: what it remembers between polls. No I/O; the caller fetches."""

    def __init__(
        self,
        batch_id: str,
        criteria: WaitCriteria,
        log: Any,
        agent_id: str | None = None,
        created_at: datetime | None = None,
    ) -> None:
        self.batch_id = batch_id
        self.criteria = criteria
        self.log = log
        self.agent_id = agent_id
        """Whose batch list shows the batch's counters; learnt from the first read."""
        self.created_at = created_at
        """Where a walk of the list may stop; learnt from the first read."""
        self.polls = 0
        self.consecutive_failures = 0
        self.last_batch: CallBatch | None = None
        """The last batch read, without recipients (never kept between polls)."""
        self.last_summary: dict[str, Any] | None = None
        self._warned_statuses: set[str] = set()

    def reads_list(self) -> bool:
        """Whether the next poll reads the list's counters: the agent is known and the batch is not small."""
        if self.agent_id is None:
            return False
        return self.last_batch is None or self.last_batch.total_calls_scheduled >= LIST_MIN_RECIPIENTS

    def needs_full_read(self, counters: CallBatch | None) -> bool:
        """Whether to confirm the list's answer with a GET: the batch is missing, or its counters end the wait."""
        return counters is None or self.criteria.classify(counters) != "waiting"

    def observe(self, batch: CallBatch) -> Verdict:
        """A poll answered: log progress, then classify."""
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
        if outcome == "success":
            return Verdict("success", f"Call batch {line}", self.last_summary)
        if outcome == "failure":
            return Verdict("failure", failure_message(batch, self.criteria), self.last_summary)
        return Verdict("waiting", line, self.last_summary)

    def failed(self, error: CartesiaError) -> Verdict:
        """A poll failed after the hook's own retries: fatal at once, or counted against the budget."""
        self.polls += 1
        if is_permanent(error):
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

    def timed_out(self) -> Verdict:
        """The deadline passed before the batch settled."""
        return Verdict("timeout", timeout_message(self.batch_id, self.last_summary), self.last_summary)

    def next_delay(self, poll_interval: float, now: float) -> float:
        """Seconds until the next poll: ``poll_interval``, or until shortly before a future ``scheduled_at``."""
        wait = scheduled_wait(self.last_batch, poll_interval, now)
        if wait is None:
            return poll_interval
        self.log.info("Call batch %s is scheduled for later; next poll in %.0f s", self.batch_id, wait)
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


def trigger_event(verdict: Verdict, batch_id: str) -> dict[str, Any]:
    """The payload a trigger yields for a verdict that ends the wait: its outcome is the event's status."""
    return {
        "status": verdict.outcome,
        "batch_id": batch_id,
        "message": verdict.message,
        "summary": verdict.summary,
        "retriable": verdict.retriable,
    }


def verdict_from_event(event: Any, batch_id: str) -> Verdict:
    """The verdict a deferred wait resumed with; ``ValueError`` (fail closed) unless the event is well-formed.

    ``None``, a status not in :data:`EVENT_STATUSES`, another batch's event or a success without a
    summary never fall through to success.
    """
    if not isinstance(event, Mapping):
        raise ValueError(
            f"The wait for call batch {batch_id} resumed without a trigger event (got {type(event).__name__}); "
            "failing rather than assuming success"
        )
    status = event.get("status")
    if status not in EVENT_STATUSES:
        raise ValueError(
            f"The wait for call batch {batch_id} resumed with an unknown event status {status!r} "
            f"(expected one of {sorted(EVENT_STATUSES)}); failing rather than assuming success"
        )
    if event.get("batch_id") != batch_id:
        raise ValueError(
            f"The wait for call batch {batch_id} resumed with an event for batch {event.get('batch_id')!r}"
        )
    summary = event.get("summary")
    if status == "success" and not isinstance(summary, Mapping):
        raise ValueError(f"The wait for call batch {batch_id} resumed with a success event without a summary")
    message = str(event.get("message") or (timeout_message(batch_id, summary) if status == "timeout" else ""))
    return Verdict(status, message, summary, bool(event.get("retriable")))
