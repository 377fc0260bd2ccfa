"""Models parse the API's shapes, stay open to new values, and answer what the sensor needs."""

from __future__ import annotations

from datetime import timezone

import pytest

from airflow_provider_cartesia.models import AgentCall, BatchStatus, CallBatch


def batch(status: str, scheduled: int = 10, dispatched: int = 10, finished: int = 10, **extra: object) -> CallBatch:
    return CallBatch(
        id="acb_1",
        status=status,
        total_calls_scheduled=scheduled,
        total_calls_dispatched=dispatched,
        total_calls_finished=finished,
        **extra,
    )


def test_settled_means_terminal_and_every_dispatched_call_finished():
    assert not batch("completed", finished=9).is_settled
    assert batch("completed").is_settled
    assert not batch("in_progress", dispatched=10, finished=10).is_settled
    assert {"completed", "failed", "cancelled"} == BatchStatus.TERMINAL


def test_summary_and_progress_line_hold_counts_only():
    b = CallBatch.model_validate(
        {
            "id": "acb_123",
            "name": "Renewals",
            "status": "in_progress",
            "total_calls_scheduled": 5000,
            "total_calls_dispatched": 3100,
            "total_calls_finished": 1234,
            "recipients": [
                {"id": "r1", "to_number": "+14155550100", "status": "completed", "metadata": {"a": 1}},
                {"id": "r2", "to_number": "+14155550101", "status": "queued"},
                {"id": "r3", "to_number": "+14155550102", "status": "completed"},
            ],
        }
    )
    assert b.progress_line() == "acb_123 in_progress: 1,234 of 5,000 calls finished (24.7%), 3,100 dispatched"
    assert b.summary() == {
        "batch_id": "acb_123",
        "name": "Renewals",
        "status": "in_progress",
        "total_calls_scheduled": 5000,
        "total_calls_dispatched": 3100,
        "total_calls_finished": 1234,
        "recipient_status_counts": {"completed": 2, "queued": 1},
        "retry_count": 0,
    }


def test_only_id_is_required_and_unknown_fields_are_kept():
    b = CallBatch.model_validate_json(b'{"id": "acb_1", "brand_new_field": [1, 2]}')
    assert b.status is None and b.total_calls_scheduled == 0
    assert b.model_extra == {"brand_new_field": [1, 2]}
    with pytest.raises(ValueError, match="id"):
        CallBatch.model_validate({"status": "completed"})


def test_call_duration_is_derived():
    call = AgentCall.model_validate(
        {"id": "ac_1", "start_time": "2026-06-01T10:00:00Z", "end_time": "2026-06-01T10:01:30.5Z", "status": "active"}
    )
    assert call.duration_seconds == 90.5
    assert call.start_time is not None and call.start_time.tzinfo is timezone.utc
    assert AgentCall(id="ac_2").duration_seconds is None


def test_datetimes_are_aware_utc_and_a_recipient_without_status_counts_as_unknown():
    b = CallBatch.model_validate(
        {
            "id": "acb_1",
            "created_at": "2026-06-01T12:00:00+02:00",
            "scheduled_at": "2026-06-01T12:00:00",
            "recipients": [{"id": "r1"}],
        }
    )
    assert b.created_at is not None and b.created_at.isoformat() == "2026-06-01T10:00:00+00:00"
    assert b.scheduled_at is not None and b.scheduled_at.isoformat() == "2026-06-01T12:00:00+00:00"
    assert b.recipient_status_counts() == {"unknown": 1}
