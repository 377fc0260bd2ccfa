"""JSON renderings of the simulated objects, shaped like the API's (cartesia-api.md §3).

Optional recipient fields (``agent_call_id``, ``end_reason``, ``error_message``) are omitted when
absent, as the schema does not allow null there; nullable ``AgentCall`` fields are sent as null.
"""

from __future__ import annotations

import zlib
from datetime import datetime, timezone
from typing import Any

from airflow_provider_cartesia.testing.state import (
    CANCELLED,
    DISPATCHED,
    ENDED,
    QUEUED,
    STARTED,
    Attempt,
    Batch,
    Recipient,
    snapshot,
)

AGENT_NAME = "Simulated agent"

_SCRIPTS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "The customer confirmed tomorrow's appointment.",
        (
            ("assistant", "Hi, this is the scheduling assistant calling about your appointment."),
            ("user", "Oh, hi. Yes?"),
            ("assistant", "Can you still make it tomorrow at ten?"),
            ("user", "Yes, that works for me."),
            ("assistant", "Great, you're confirmed. Have a nice day!"),
        ),
    ),
    (
        "The customer asked to be called back next week.",
        (
            ("assistant", "Hello, I'm calling with a quick reminder about your renewal."),
            ("user", "I'm busy right now, can you call next week?"),
            ("assistant", "Of course. I'll note that and call you back next week."),
        ),
    ),
    (
        "The customer answered the survey and rated the service 4 out of 5.",
        (
            ("assistant", "Hi! Do you have a minute for a two-question survey?"),
            ("user", "Sure."),
            ("assistant", "How would you rate our service from one to five?"),
            ("user", "Four."),
            ("assistant", "Thank you, that's all. Goodbye!"),
        ),
    ),
)


def fmt_time(when: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``; milliseconds only when not zero (``2026-06-01T12:00:00Z``)."""
    when = when.astimezone(timezone.utc)
    base = when.strftime("%Y-%m-%dT%H:%M:%S")
    millis = when.microsecond // 1000
    return f"{base}.{millis:03d}Z" if millis else f"{base}Z"


def batch_json(batch: Batch, now: datetime, *, with_recipients: bool) -> dict[str, Any]:
    """An ``AgentCallBatch``; ``recipients`` only for GET of one batch."""
    snap = snapshot(batch, now)
    body: dict[str, Any] = {
        "id": batch.id,
        "name": batch.name,
        "agent_id": batch.agent_id,
        "from_number_id": batch.from_number_id,
        "region": batch.region,
        "target_concurrency_limit": batch.target_concurrency_limit,
        "status": snap.status,
        "total_calls_scheduled": snap.scheduled,
        "total_calls_dispatched": snap.dispatched,
        "total_calls_finished": snap.finished,
        "retry_count": len(batch.retries),
        "created_at": fmt_time(batch.created_at),
        "last_updated_at": fmt_time(snap.last_updated_at),
    }
    if batch.scheduled_at is not None:
        body["scheduled_at"] = fmt_time(batch.scheduled_at)
    if now >= batch.admitted_at and not (batch.cancelled_at is not None and batch.cancelled_at < batch.admitted_at):
        body["admitted_at"] = fmt_time(batch.admitted_at)
    if with_recipients:
        body["recipients"] = [recipient_json(r, now) for r in batch.recipients]
    return body


def recipient_json(recipient: Recipient, now: datetime) -> dict[str, Any]:
    """An ``AgentCallBatchRecipient``: its status is the queue state, then the latest attempt's."""
    cancelled_at = recipient.batch.cancelled_at
    attempt = recipient.latest
    phase = attempt.phase(now, cancelled_at)
    body: dict[str, Any] = {
        "id": recipient.id,
        "to_number": recipient.to_number,
        "status": phase if phase != ENDED else attempt.final_status,
        "created_at": fmt_time(recipient.created_at),
    }
    if phase not in (QUEUED, CANCELLED):
        if attempt.call_id is not None:
            body["agent_call_id"] = attempt.call_id
        if phase == ENDED:
            if attempt.end_reason is not None:
                body["end_reason"] = attempt.end_reason
            if attempt.pre_dial and attempt.error_message is not None:
                body["error_message"] = attempt.error_message
    body["metadata"] = recipient.metadata
    return body


_CALL_STATUS = {DISPATCHED: "created", STARTED: "started"}


def _transcript(attempt: Attempt, now: datetime) -> list[dict[str, Any]]:
    if attempt.answer_at is None or now < attempt.answer_at:
        return []
    talk = (attempt.end_at - attempt.answer_at).total_seconds()
    elapsed = min((now - attempt.answer_at).total_seconds(), talk)
    turns = _SCRIPTS[attempt.flavor % len(_SCRIPTS)][1]
    slot = talk / len(turns)
    out: list[dict[str, Any]] = []
    for index, (role, text) in enumerate(turns):
        start, end = round(index * slot, 3), round((index + 0.9) * slot, 3)
        if end > elapsed:
            break
        turn: dict[str, Any] = {"role": role, "text": text, "start_timestamp": start, "end_timestamp": end}
        if role == "assistant":
            turn["tts_ttfb"] = round(0.12 + (attempt.flavor + index) % 7 / 100, 3)
        else:
            turn["stt_ttfb"] = round(0.08 + (attempt.flavor + index) % 5 / 100, 3)
        out.append(turn)
    return out


def _agent_number(from_number_id: str) -> str:
    return f"+1415{zlib.crc32(from_number_id.encode()) % 10_000_000:07d}"


def call_json(recipient: Recipient, attempt: Attempt, now: datetime, *, with_transcript: bool) -> dict[str, Any]:
    """An ``AgentCall`` with the spec's status enum (created, started, completed, failed)."""
    phase = attempt.phase(now)
    ended = phase == ENDED
    connected = attempt.answer_at is not None and now >= attempt.answer_at
    body: dict[str, Any] = {
        "id": attempt.call_id,
        "agent_id": recipient.agent_id,
        "agent_name": AGENT_NAME,
        "status": attempt.final_status if ended else _CALL_STATUS[phase],
        "start_time": fmt_time(attempt.dispatch_at),
        "end_time": fmt_time(attempt.end_at) if ended else None,
        "end_reason": attempt.end_reason if ended else None,
        "error_message": attempt.error_message if ended else None,
        "telephony_account_type": recipient.telephony_account_type,
        "metadata": recipient.metadata,
        "redacted_at": None,
    }
    body["summary"] = (
        _SCRIPTS[attempt.flavor % len(_SCRIPTS)][0] if ended and connected and not attempt.error_message else None
    )
    body["telephony_params"] = {
        "to": recipient.to_number,
        "from": _agent_number(recipient.from_number_id),
        "call_sid": attempt.call_sid,
        "direction": "outbound",
        "connection_type": "phone",
    }
    if with_transcript:
        body["transcript"] = _transcript(attempt, now)
    return body
