"""Typed views of Cartesia's call-batch and agent-call objects.

Field names are the API's. Every field but ``id`` is optional and unknown fields are kept
(``extra="allow"``): Cartesia adds fields and enum values within an API version, so statuses are
plain strings (:class:`~airflow_provider_cartesia.waiting.WaitCriteria` gives them meaning).
Personal data (numbers, metadata, transcripts, summaries) is left out of ``repr()``.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class BatchStatus:
    """Values of ``CallBatch.status``; the API derives them from *dispatch* progress."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    """Every recipient was dispatched; calls may still be ringing or talking."""
    FAILED = "failed"
    CANCELLED = "cancelled"
    KNOWN = frozenset({PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED})
    TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})


MAX_RECIPIENTS_PER_BATCH = 5000
"""Most recipients one call batch takes (the API refuses more; older API versions took 1,000)."""

WaitFor = Literal["finished", "dispatched"]


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is taken to be UTC (the API always sends an offset)."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def aware_datetime(value: Any, name: str) -> datetime | None:
    """A user-given date-time (a datetime or RFC 3339 text) as aware UTC; None or '' is None.

    Raises ``ValueError`` naming ``name`` for text that is not a date-time or one without an offset.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{name} {value!r} is not an RFC 3339 date-time (e.g. 2026-06-15T16:00:00Z)") from None
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime or RFC 3339 text, got a {type(value).__name__}")
    if value.utcoffset() is None:
        raise ValueError(f"{name} {value.isoformat()} has no time zone; give an offset such as Z or +02:00")
    return value.astimezone(timezone.utc)


UtcDatetime = Annotated[datetime, AfterValidator(utc)]
"""A datetime field of an API object: always aware, in UTC."""


class CartesiaModel(BaseModel):
    """Base of every API object: unknown fields are kept, nothing is coerced silently into a lie."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class CallBatchRecipient(CartesiaModel):
    """One recipient of a call batch and the state of its latest call attempt."""

    id: str
    """Recipient id within the batch."""
    to_number: str | None = Field(default=None, repr=False)
    """Destination number in E.164 form. Personal data: never logged."""
    status: str | None = None
    """``queued``, ``dispatched``, ``started``, ``completed``, ``failed`` or ``cancelled`` (open set)."""
    created_at: UtcDatetime | None = None
    """When the recipient was queued."""
    agent_call_id: str | None = None
    """Id of the latest call attempt, set once dispatched."""
    end_reason: str | None = None
    """Why the latest call ended (``agent_hangup``, ``dial_no_answer``, ...)."""
    error_message: str | None = None
    """Why the recipient failed before a call could be placed."""
    metadata: dict[str, Any] | None = Field(default=None, repr=False)
    """Metadata sent with the recipient at creation. Personal data: never logged."""


class CallBatch(CartesiaModel):
    """An outbound call batch (campaign). ``recipients`` is only present on a single-batch read."""

    id: str
    """Batch id (``acb_...``)."""
    name: str | None = None
    """The batch's label."""
    agent_id: str | None = None
    """Agent that handles the calls."""
    from_number_id: str | None = None
    """Phone-number id the batch dials from."""
    region: str | None = None
    """``US``, ``EU`` or ``APAC``."""
    target_concurrency_limit: int | None = None
    """Most calls of this batch dialed at once."""
    status: str | None = None
    """Dispatch status; see :class:`BatchStatus`. ``completed`` does not mean the calls ended."""
    total_calls_scheduled: int = 0
    """Recipients queued in the batch."""
    total_calls_dispatched: int = 0
    """Recipients handed to the dialer so far, pre-dial failures included."""
    total_calls_finished: int = 0
    """Recipients whose latest attempt is terminal, pre-dial failures included."""
    retry_count: int = 0
    """Times the batch was retried."""
    created_at: UtcDatetime | None = None
    """When the batch was created."""
    last_updated_at: UtcDatetime | None = None
    """When the batch last changed."""
    scheduled_at: UtcDatetime | None = None
    """When dispatch is scheduled to start; absent for immediate batches."""
    admitted_at: UtcDatetime | None = None
    """When dispatch actually started."""
    recipients: list[CallBatchRecipient] | None = Field(default=None, repr=False)
    """Every recipient, on ``GET /agents/calls/batches/{id}`` only."""

    @property
    def is_terminal(self) -> bool:
        """Whether dispatching is over: ``completed``, ``failed`` or ``cancelled``."""
        return self.status in BatchStatus.TERMINAL

    @property
    def all_dispatched_calls_finished(self) -> bool:
        """Whether every dispatched recipient's latest call attempt has ended."""
        return self.total_calls_finished >= self.total_calls_dispatched

    @property
    def is_settled(self) -> bool:
        """Terminal, and no dispatched call is still ringing or talking."""
        return self.is_terminal and self.all_dispatched_calls_finished

    def recipient_status_counts(self) -> dict[str, int]:
        """Recipients per status (empty when the batch came without recipients)."""
        return dict(Counter(r.status or "unknown" for r in self.recipients or ()))

    def summary(self) -> dict[str, Any]:
        """A small, JSON-safe digest for XCom and logs: counts only, never a recipient."""
        return {
            "batch_id": self.id,
            "name": self.name,
            "status": self.status,
            "total_calls_scheduled": self.total_calls_scheduled,
            "total_calls_dispatched": self.total_calls_dispatched,
            "total_calls_finished": self.total_calls_finished,
            "recipient_status_counts": self.recipient_status_counts(),
            "retry_count": self.retry_count,
        }

    def progress_line(self) -> str:
        """``acb_1 in_progress: 1,234 of 5,000 calls finished (24.7%), 3,100 dispatched``."""
        total = self.total_calls_scheduled
        pct = f" ({100 * self.total_calls_finished / total:.1f}%)" if total else ""
        return (
            f"{self.id} {self.status}: {self.total_calls_finished:,} of {total:,} calls finished{pct}, "
            f"{self.total_calls_dispatched:,} dispatched"
        )


class RecipientStatusOnly(CartesiaModel):
    """A recipient as a wait reads it: its status, nothing else (no number, no metadata)."""

    model_config = ConfigDict(extra="ignore")

    status: str | None = None


class CallBatchStatuses(CallBatch):
    """A batch read to start or end a wait: every batch field, and only each recipient's status.

    What the summary's ``recipient_status_counts`` needs; parsing 5,000 recipients this way takes a
    fifth of the time of full models, and nothing personal is ever held.
    """

    recipients: list[RecipientStatusOnly] | None = None  # type: ignore[assignment]


class AgentCall(CartesiaModel):
    """One call attempt placed by an agent (a retried recipient has several)."""

    id: str
    """Call id (``ac_...``)."""
    agent_id: str | None = None
    agent_name: str | None = None
    status: str | None = None
    """``created``, ``started``, ``completed`` or ``failed`` (open set; the SDK also says ``active``)."""
    start_time: UtcDatetime | None = None
    end_time: UtcDatetime | None = None
    end_reason: str | None = None
    error_message: str | None = None
    redacted_at: UtcDatetime | None = None
    telephony_account_type: str | None = None
    summary: str | None = Field(default=None, repr=False)
    """Cartesia's summary of the conversation. Personal data: never logged."""
    transcript: list[dict[str, Any]] | None = Field(default=None, repr=False)
    """Turns of the conversation, only when asked for. Personal data: never logged."""
    telephony_params: dict[str, Any] | None = Field(default=None, repr=False)
    """``to``, ``from``, ``call_sid``, ... Personal data: never logged."""
    metadata: dict[str, Any] | None = Field(default=None, repr=False)
    """The recipient's metadata. Personal data: never logged."""

    @property
    def duration_seconds(self) -> float | None:
        """``end_time - start_time``; the API has no duration field."""
        if self.start_time is None or self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds()


class CallBatchPage(CartesiaModel):
    """One page of ``GET /agents/calls/batches`` (newest first)."""

    data: list[CallBatch]
    has_more: bool = False
    next_page: str | None = None


class AgentCallPage(CartesiaModel):
    """One page of ``GET /agents/calls``."""

    data: list[AgentCall]
    has_more: bool = False
    next_page: str | None = None
