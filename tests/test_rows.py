"""Turning a batch (and its calls) into export rows: column order, timestamps, JSON, the latest-call join."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from airflow_provider_cartesia.models import AgentCall, CallBatch
from airflow_provider_cartesia.rows import (
    CALL_COLUMNS,
    PRIMARY_KEY,
    RECIPIENT_COLUMNS,
    TRANSCRIPT_COLUMN,
    batch_rows,
    collect_call_outcomes,
    export_columns,
)

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
EXPORTED = datetime(2026, 6, 1, 14, 0, tzinfo=timezone.utc)
NAMES = [c.name for c in export_columns(include_calls=True, include_transcript=True)]


def recipient(rid: str, number: str, *, call: str | None = None, metadata: Any = None, **extra: Any) -> dict:
    body = {"id": rid, "to_number": number, "status": "completed", "created_at": T0.isoformat(), "metadata": metadata}
    if call:
        body["agent_call_id"] = call
    return {**body, **extra}


def call(cid: str, number: str | None, minute: int, *, metadata: Any = None, **extra: Any) -> AgentCall:
    body: dict[str, Any] = {
        "id": cid,
        "status": "completed",
        "start_time": (T0 + timedelta(minutes=minute)).isoformat(),
        "end_time": (T0 + timedelta(minutes=minute, seconds=75)).isoformat(),
        "summary": f"summary of {cid}",
        "metadata": metadata,
        "transcript": [{"role": "user", "text": f"hello from {cid} — ünïcode"}],
    }
    if number is not None:
        body["telephony_params"] = {"to": number, "from": "+14150000000"}
    return AgentCall.model_validate({**body, **extra})


def batch(*recipients: dict, status: str = "completed") -> CallBatch:
    return CallBatch.model_validate(
        {"id": "acb_1", "name": "Renewals", "agent_id": "agent_1", "status": status, "recipients": list(recipients)}
    )


def as_dicts(rows: list[tuple[Any, ...]], names: list[str]) -> list[dict[str, Any]]:
    return [dict(zip(names, row, strict=True)) for row in rows]


def test_columns_in_row_order_with_the_options() -> None:
    assert [c.name for c in export_columns()] == [
        "batch_id",
        "recipient_id",
        "batch_name",
        "agent_id",
        "batch_status",
        "to_number",
        "status",
        "end_reason",
        "error_message",
        "agent_call_id",
        "created_at",
        "metadata",
        "exported_at",
    ]
    assert export_columns(include_calls=True) == RECIPIENT_COLUMNS + CALL_COLUMNS
    assert export_columns(include_calls=True, include_transcript=True)[-1] == TRANSCRIPT_COLUMN
    assert PRIMARY_KEY == ("batch_id", "recipient_id")
    with pytest.raises(ValueError, match="include_calls"):
        export_columns(include_transcript=True)


def test_recipient_rows_carry_batch_fields_utc_times_and_json_text() -> None:
    b = batch(
        recipient("r1", "+14155550001", metadata={"name": 'Zoë "Z" O\'Neil', "n": {"a": [1, None]}}),
        recipient("r2", "+14155550002", metadata=None, created_at="2026-06-01T14:00:00+02:00"),
        recipient("r3", "+14155550003", metadata={}, created_at="2026-06-01T12:00:00", status="failed"),
    )
    rows = as_dicts(list(batch_rows(b, exported_at=EXPORTED, adapt_time=lambda d: d)), NAMES[:13])
    assert [r["recipient_id"] for r in rows] == ["r1", "r2", "r3"]
    assert {(r["batch_id"], r["batch_name"], r["agent_id"], r["batch_status"]) for r in rows} == {
        ("acb_1", "Renewals", "agent_1", "completed")
    }
    assert rows[0]["metadata"] == '{"name":"Zoë \\"Z\\" O\'Neil","n":{"a":[1,null]}}'
    assert json.loads(rows[0]["metadata"]) == {"name": 'Zoë "Z" O\'Neil', "n": {"a": [1, None]}}
    assert rows[1]["metadata"] is None, "no metadata is SQL NULL, not the JSON text 'null'"
    assert rows[2]["metadata"] == "{}"
    # +02:00 is converted, a naive time is taken as UTC: every timestamp reaches the engine in UTC.
    assert rows[1]["created_at"] == T0 and rows[1]["created_at"].tzinfo == timezone.utc
    assert rows[2]["created_at"] == T0 and rows[2]["created_at"].tzinfo == timezone.utc
    assert {r["exported_at"] for r in rows} == {EXPORTED}


def test_the_engine_decides_how_a_timestamp_is_passed() -> None:
    b = batch(recipient("r1", "+14155550001"))
    (row,) = batch_rows(b, exported_at=EXPORTED, adapt_time=lambda d: d.isoformat(timespec="microseconds"))
    assert row[10] == "2026-06-01T12:00:00.000000+00:00"
    assert row[12] == "2026-06-01T14:00:00.000000+00:00"


def test_latest_call_per_recipient_and_attempt_counts() -> None:
    recipients = [
        recipient("r1", "+14155550001", call="ac_r1_2"),  # retried: two attempts
        recipient("r2", "+14155550002", call="ac_r2_1"),  # one attempt
        recipient("r3", "+14155550003", status="failed", error_message="Number cannot receive calls"),  # pre-dial
    ]
    calls = [  # newest first, as the API lists them; earlier attempts interleaved
        call("ac_r1_2", "+14155550001", 30),
        call("ac_r2_1", "+14155550002", 10),
        call("ac_r1_1", "+14155550001", 5, status="failed", end_reason="dial_no_answer"),
    ]
    b = batch(*recipients)
    outcomes = collect_call_outcomes(b.recipients or [], calls)
    assert outcomes.attempts == {"r1": 2, "r2": 1, "r3": 0}
    assert outcomes.latest["r1"].start_time == T0 + timedelta(minutes=30)
    assert outcomes.latest["r1"].status == "completed"
    assert outcomes.latest["r1"].transcript is None, "transcripts are kept only when asked"
    rows = as_dicts(list(batch_rows(b, exported_at=EXPORTED, adapt_time=lambda d: d, calls=outcomes)), NAMES[:19])
    r1, r2, r3 = rows
    assert r1["call_status"] == "completed"
    assert r1["call_start_time"] == T0 + timedelta(minutes=30)
    assert r1["call_end_time"] == T0 + timedelta(minutes=30, seconds=75)
    assert r1["call_duration_seconds"] == 75.0
    assert r1["call_summary"] == "summary of ac_r1_2"
    assert r1["call_attempts"] == 2
    assert r2["call_attempts"] == 1
    assert (r3["call_status"], r3["call_start_time"], r3["call_summary"], r3["call_attempts"]) == (None, None, None, 0)
    assert r3["error_message"] == "Number cannot receive calls"


def test_shared_numbers_are_told_apart_by_metadata_or_left_unknown() -> None:
    recipients = [
        recipient("a", "+14155550009", call="ac_a", metadata={"k": 1}),
        recipient("b", "+14155550009", call="ac_b", metadata={"k": 2}),
        recipient("c", "+14155550007", call="ac_c", metadata={"same": True}),
        recipient("d", "+14155550007", call="ac_d", metadata={"same": True}),
    ]
    calls = [
        call("ac_a", "+14155550009", 9, metadata={"k": 1}),
        call("ac_a0", "+14155550009", 1, metadata={"k": 1}),
        call("ac_b", "+14155550009", 8, metadata={"k": 2}),
        call("ac_c", "+14155550007", 7, metadata={"same": True}),
        call("ac_d", "+14155550007", 6, metadata={"same": True}),
    ]
    outcomes = collect_call_outcomes(recipients_of(recipients), calls)
    assert outcomes.attempts == {"a": 2, "b": 1, "c": None, "d": None}
    assert set(outcomes.latest) == {"a", "b", "c", "d"}


def test_a_redacted_latest_call_still_counts_once_and_transcripts_on_request() -> None:
    recipients = [recipient("r1", "+14155550001", call="ac_1")]
    redacted = call("ac_1", None, 3, redacted_at=T0.isoformat())
    outcomes = collect_call_outcomes(recipients_of(recipients), [redacted], keep_transcript=True)
    assert outcomes.attempts == {"r1": 1}
    assert outcomes.latest["r1"].transcript == [{"role": "user", "text": "hello from ac_1 — ünïcode"}]
    (row,) = batch_rows(
        batch(*recipients), exported_at=EXPORTED, adapt_time=lambda d: d, calls=outcomes, include_transcript=True
    )
    assert len(row) == len(NAMES)
    assert "ünïcode" in row[-1], "JSON text is UTF-8, not ASCII-escaped"
    assert json.loads(row[-1]) == [{"role": "user", "text": "hello from ac_1 — ünïcode"}]


def test_transcript_column_needs_calls() -> None:
    with pytest.raises(ValueError, match="calls"):
        list(batch_rows(batch(), exported_at=EXPORTED, adapt_time=lambda d: d, include_transcript=True))


def recipients_of(items: list[dict]) -> list:
    return batch(*items).recipients or []
