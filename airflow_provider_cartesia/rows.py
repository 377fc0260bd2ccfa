"""The export row: one per ``(batch_id, recipient_id)``, its columns, and how a batch becomes rows.

A row is a tuple of DB-API parameters in :func:`export_columns` order; the caller says how its engine
takes a timestamp (``adapt_time``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic_core import to_json

if TYPE_CHECKING:
    from airflow_provider_cartesia.models import AgentCall, CallBatch, CallBatchRecipient

ColumnKind = Literal["key", "text", "long_text", "timestamp", "float", "integer", "json"]
"""Logical column types; the warehouse layer maps each to an engine's DDL type."""


@dataclass(frozen=True)
class Column:
    """One column of the export table."""

    name: str
    kind: ColumnKind
    doc: str


RECIPIENT_COLUMNS: tuple[Column, ...] = (
    Column("batch_id", "key", "The batch's id (acb_...); with recipient_id, the primary key."),
    Column("recipient_id", "key", "The recipient's id within the batch."),
    Column("batch_name", "long_text", "The batch's label."),
    Column("agent_id", "text", "Agent that handles the batch's calls."),
    Column("batch_status", "text", "The batch's dispatch status at export time."),
    Column("to_number", "text", "Destination number (E.164). Personal data."),
    Column("status", "text", "Recipient status: queue state, then the latest attempt's outcome."),
    Column("end_reason", "text", "Why the latest call ended (agent_hangup, dial_no_answer, ...)."),
    Column("error_message", "long_text", "Why the recipient failed before a call could be placed."),
    Column("agent_call_id", "text", "Id of the latest call attempt."),
    Column("created_at", "timestamp", "When the recipient was queued (UTC)."),
    Column("metadata", "json", "The recipient's metadata, as sent at creation. Personal data."),
    Column("exported_at", "timestamp", "When this row was written (UTC)."),
)
CALL_COLUMNS: tuple[Column, ...] = (
    Column("call_status", "text", "Status of the latest call attempt (created, started, completed, failed)."),
    Column("call_start_time", "timestamp", "Start of the latest call attempt (UTC)."),
    Column("call_end_time", "timestamp", "End of the latest call attempt (UTC)."),
    Column("call_duration_seconds", "float", "call_end_time - call_start_time, in seconds."),
    Column("call_summary", "long_text", "Cartesia's summary of the latest call. Personal data."),
    Column("call_attempts", "integer", "Call records of this recipient in the batch (NULL when ambiguous)."),
)
TRANSCRIPT_COLUMN = Column("call_transcript", "json", "Transcript of the latest call. Personal data.")
PRIMARY_KEY: tuple[str, ...] = ("batch_id", "recipient_id")


def json_text(value: Any) -> str | None:
    """Compact UTF-8 JSON text (None stays None, i.e. SQL NULL); pydantic-core's encoder is 4x the stdlib's."""
    return None if value is None else to_json(value).decode()


def export_columns(*, include_calls: bool = False, include_transcript: bool = False) -> tuple[Column, ...]:
    """The table's columns, in row order, for the given options."""
    if include_transcript and not include_calls:
        raise ValueError("include_transcript=True needs include_calls=True")
    columns = RECIPIENT_COLUMNS
    if include_calls:
        columns += CALL_COLUMNS
    if include_transcript:
        columns += (TRANSCRIPT_COLUMN,)
    return columns


@dataclass(frozen=True)
class CallOutcomes:
    """Per recipient id: its latest call (when the batch's calls hold it) and its number of call records."""

    latest: Mapping[str, AgentCall]
    attempts: Mapping[str, int | None]


def collect_call_outcomes(
    recipients: Sequence[CallBatchRecipient],
    calls: Iterable[AgentCall],
    *,
    keep_transcript: bool = False,
) -> CallOutcomes:
    """Join a batch's call records (any order, streamed) to its recipients; memory holds one entry per recipient.

    The latest call is the recipient's ``agent_call_id``. The calls API has no recipient id, so attempts
    are counted by destination number, and by metadata where recipients share a number (ambiguous: None).
    """
    by_call_id = {r.agent_call_id: r.id for r in recipients if r.agent_call_id}
    by_number: dict[str, list[CallBatchRecipient]] = {}
    for r in recipients:
        if r.to_number:
            by_number.setdefault(r.to_number, []).append(r)
    latest: dict[str, AgentCall] = {}
    counts: Counter[str] = Counter()
    ambiguous: set[str] = set()
    for call in calls:
        rid = by_call_id.get(call.id)
        if rid is not None:  # the transcript, the call's largest part, is kept only when asked
            latest[rid] = call if keep_transcript else call.model_copy(update={"transcript": None})
        to = (call.telephony_params or {}).get("to")
        owners = by_number.get(to) if isinstance(to, str) else None
        if not owners:
            continue
        if len(owners) > 1:
            matched = [o for o in owners if o.metadata == call.metadata]
            if len(matched) != 1:
                ambiguous.update(o.id for o in (matched or owners))
                continue
            owners = matched
        counts[owners[0].id] += 1
    # A latest call that lost its number (redacted) still is one attempt.
    attempts = {r.id: None if r.id in ambiguous else max(counts[r.id], 1 if r.id in latest else 0) for r in recipients}
    return CallOutcomes(latest=latest, attempts=attempts)


def batch_rows(
    batch: CallBatch,
    *,
    exported_at: datetime,
    adapt_time: Callable[[datetime], Any],
    calls: CallOutcomes | None = None,
    include_transcript: bool = False,
) -> Iterator[tuple[Any, ...]]:
    """One row per recipient of ``batch`` (fetched with its recipients), in :func:`export_columns` order.

    :param exported_at: the value of ``exported_at`` for every row (aware UTC, as model date-times are).
    :param adapt_time: turns an aware UTC datetime into what the engine takes for a timestamp.
    :param calls: the batch's call outcomes; pass them to fill the call columns.
    :param include_transcript: add ``call_transcript`` (needs ``calls``).
    """
    if include_transcript and calls is None:
        raise ValueError("include_transcript=True needs the batch's calls")

    @cache  # recipients are queued with their batch: they share one created_at, adapted once
    def adapt(value: datetime | None) -> Any:
        return None if value is None else adapt_time(value)

    for r in batch.recipients or ():
        row: tuple[Any, ...] = (
            batch.id,
            r.id,
            batch.name,
            batch.agent_id,
            batch.status,
            r.to_number,
            r.status,
            r.end_reason,
            r.error_message,
            r.agent_call_id,
            adapt(r.created_at),
            json_text(r.metadata),
            adapt(exported_at),
        )
        if calls is not None:
            call = calls.latest.get(r.id)
            attempts = calls.attempts.get(r.id, 0)
            if call is None:  # failed before dialing, or its call is not in the list
                row += (None, None, None, None, None, attempts)
            else:
                row += (
                    call.status,
                    adapt(call.start_time),
                    adapt(call.end_time),
                    call.duration_seconds,
                    call.summary,
                    attempts,
                )
            if include_transcript:
                row += (None if call is None else json_text(call.transcript),)
        yield row
