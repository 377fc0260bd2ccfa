"""The wait's shared decisions (pure, as tables) and CallBatchWaitMixin on an operator that is not a sensor."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow.sdk import BaseOperator

from airflow_provider_cartesia.compat import AirflowException, AirflowFailException, AirflowSensorTimeout, TaskDeferred
from airflow_provider_cartesia.exceptions import (
    CartesiaAPIError,
    CartesiaAuthError,
    CartesiaBadRequestError,
    CartesiaConfigError,
    CartesiaInvalidIdError,
    CartesiaNotFoundError,
    CartesiaRateLimitError,
    CartesiaResponseError,
    CartesiaServerError,
    CartesiaTransportError,
)
from airflow_provider_cartesia.links import CALL_BATCH_URL_XCOM_KEY
from airflow_provider_cartesia.models import CallBatch
from airflow_provider_cartesia.sensors.call_batch import WAITING_BATCH_ID_XCOM_KEY, CallBatchWaitMixin
from airflow_provider_cartesia.testing import CartesiaSimulator, Fault
from airflow_provider_cartesia.triggers.call_batch import CallBatchTrigger
from airflow_provider_cartesia.waiting import (
    BatchWatch,
    CallBatchWaitError,
    Verdict,
    WaitCriteria,
    backoff_interval,
    scheduled_wait,
    trigger_event,
    verdict_from_event,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (CartesiaAuthError("refused", status_code=401), True),
        (CartesiaAuthError("forbidden", status_code=403), True),
        (CartesiaNotFoundError("no such batch", status_code=404), True),
        (CartesiaBadRequestError("bad version", status_code=400), True),
        (CartesiaConfigError("no API key"), True),
        (CartesiaInvalidIdError("../x"), True),
        (CartesiaRateLimitError("slow down", status_code=429), False),
        (CartesiaServerError("oops", status_code=503), False),
        (CartesiaTransportError("dropped"), False),
        (CartesiaResponseError("not JSON"), False),
        (CartesiaAPIError("teapot", status_code=418), True),
    ],
)
def test_which_failed_polls_end_the_wait_at_once(error: Exception, fatal: bool) -> None:
    verdict = BatchWatch("acb_1", WaitCriteria(), _Log()).failed(error)  # type: ignore[arg-type]
    assert verdict.outcome == ("error" if fatal else "waiting")


def _batch(**fields: Any) -> CallBatch:
    return CallBatch.model_validate({"id": "acb_1", "status": "pending", "total_calls_scheduled": 2, **fields})


@pytest.mark.parametrize(
    ("status", "dispatched", "finished", "wait_for", "expected"),
    [
        ("pending", 0, 0, "finished", "waiting"),
        ("in_progress", 5, 2, "finished", "waiting"),
        ("completed", 10, 7, "finished", "waiting"),  # every call dispatched, three still talking
        ("completed", 10, 7, "dispatched", "success"),
        ("completed", 10, 10, "finished", "success"),
        ("failed", 10, 10, "finished", "failure"),
        ("cancelled", 4, 3, "finished", "waiting"),  # calls in flight finish even after a cancel
        ("cancelled", 4, 4, "finished", "failure"),
        ("cancelled", 4, 3, "dispatched", "failure"),
        ("paused_by_carrier", 10, 10, "finished", "waiting"),  # an unknown status keeps the wait going
    ],
)
def test_classify(status: str, dispatched: int, finished: int, wait_for: str, expected: str):
    assert WaitCriteria(wait_for=wait_for).classify(
        _batch(status=status, total_calls_dispatched=dispatched, total_calls_finished=finished)
    )  # type: ignore[arg-type] == expected  # type: ignore[arg-type]


def test_classify_with_custom_statuses():
    cancelled = _batch(status="cancelled", total_calls_dispatched=4, total_calls_finished=4)
    assert (
        WaitCriteria(success_statuses=("completed", "cancelled"), failure_statuses=("failed",)).classify(cancelled)
        == "success"
    )


@pytest.mark.parametrize(
    ("scheduled_at", "interval", "expected"),
    [
        (None, 30, None),
        (NOW - timedelta(hours=1), 30, None),  # already past
        (NOW + timedelta(seconds=50), 30, None),  # the usual next poll is shortly before it anyway
        (NOW + timedelta(seconds=59), 30, None),  # wake 29 s from now: sooner than the usual next poll
        (NOW + timedelta(seconds=61), 30, 31.0),  # wake 31 s from now
        (NOW + timedelta(hours=1), 30, 3570.0),  # wake one interval before
        (NOW + timedelta(hours=1), 600, 3540.0),  # ... but never more than 60 s before
        (NOW.replace(tzinfo=None) + timedelta(hours=1), 30, 3570.0),  # the model reads a naive time as UTC
    ],
)
def test_scheduled_wait(scheduled_at: datetime | None, interval: float, expected: float | None) -> None:
    batch = _batch(scheduled_at=scheduled_at.isoformat() if scheduled_at else None)
    assert scheduled_wait(batch, interval, NOW.timestamp()) == expected


def test_backoff_interval_doubles_up_to_max_wait() -> None:
    assert [backoff_interval(10, n) for n in (0, 1, 2, 3, 4)] == [10, 10, 20, 40, 80]
    assert [backoff_interval(10, n, max_wait=30) for n in (1, 2, 3, 4)] == [10, 20, 30, 30]


def test_wait_criteria_validate_and_serialize() -> None:
    criteria = WaitCriteria.of("dispatched", ["completed", "paused"], {"failed"}, 0)
    assert criteria.to_dict() == {
        "wait_for": "dispatched",
        "success_statuses": ["completed", "paused"],
        "failure_statuses": ["failed"],
        "max_consecutive_failures": 0,
    }
    assert WaitCriteria(**criteria.to_dict()) == criteria  # type: ignore[arg-type]
    for bad, match in [
        ({"wait_for": "answered"}, "wait_for"),
        ({"success_statuses": "completed"}, "list of statuses"),
        ({"success_statuses": ()}, "at least one"),
        ({"failure_statuses": ("completed",)}, "both"),
        ({"max_consecutive_failures": -1}, "0 or more"),
        ({"max_consecutive_failures": True}, "integer"),
    ]:
        with pytest.raises(ValueError, match=match):
            WaitCriteria.of(**bad)


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, msg: str, *args: Any) -> None:
        self.lines.append(("info", msg % args))

    def warning(self, msg: str, *args: Any) -> None:
        self.lines.append(("warning", msg % args))


def test_batch_watch_budget_counts_consecutive_failures_and_resets_on_success() -> None:
    log = _Log()
    watch = BatchWatch("acb_1", WaitCriteria(max_consecutive_failures=2), log)
    server_error = CartesiaServerError("oops", status_code=503)
    assert watch.failed(server_error).outcome == "waiting"
    assert watch.failed(server_error).outcome == "waiting"
    assert watch.observe(_batch(status="in_progress")).outcome == "waiting"  # resets the count
    assert watch.failed(server_error).outcome == "waiting"
    assert watch.failed(server_error).outcome == "waiting"
    verdict = watch.failed(server_error)
    assert (verdict.outcome, verdict.retriable) == ("error", True)
    assert verdict.summary is not None and verdict.summary["status"] == "in_progress"
    assert "3 polls in a row failed" in verdict.message
    assert len([level for level, _ in log.lines if level == "warning"]) == 4

    fatal = BatchWatch("acb_1", WaitCriteria(), log).failed(CartesiaNotFoundError("gone", status_code=404))
    assert (fatal.outcome, fatal.retriable) == ("error", False)


def test_batch_watch_decisions_go_through_classify_batch() -> None:
    watch = BatchWatch("acb_1", WaitCriteria(), _Log())
    running = _batch(status="completed", total_calls_dispatched=2, total_calls_finished=1)
    assert watch.observe(running).outcome == "waiting"
    assert watch.observe(running.model_copy(update={"total_calls_finished": 2})).outcome == "success"
    cancelled = _batch(status="cancelled", total_calls_dispatched=1, total_calls_finished=1)
    assert watch.observe(cancelled).outcome == "failure"
    dispatched = BatchWatch("acb_1", WaitCriteria(wait_for="dispatched"), _Log())
    assert dispatched.observe(running).outcome == "success"


def test_failure_message_has_counts_and_no_personal_data() -> None:
    batch = CallBatch.model_validate(
        {
            "id": "acb_1",
            "status": "cancelled",
            "total_calls_scheduled": 3,
            "total_calls_dispatched": 1,
            "total_calls_finished": 1,
            "recipients": [
                {"id": "r1", "status": "completed", "to_number": "+14155550100", "metadata": {"name": "Ann"}},
                {"id": "r2", "status": "cancelled", "to_number": "+14155550101"},
                {"id": "r3", "status": "cancelled", "to_number": "+14155550102"},
            ],
        }
    )
    verdict = BatchWatch("acb_1", WaitCriteria(), _Log()).observe(batch)
    assert verdict.outcome == "failure"
    assert verdict.message == (
        "Call batch acb_1 ended with status 'cancelled', one of failure_statuses ['failed', 'cancelled']: "
        "1 of 3 calls finished, 1 dispatched; recipients: 2 cancelled, 1 completed"
    )
    assert "+1415" not in str(verdict) and "Ann" not in str(verdict)


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (None, "without a trigger event"),
        ("success", "without a trigger event"),
        ({}, "unknown event status None"),
        ({"status": "cancelled", "batch_id": "acb_1"}, "unknown event status 'cancelled'"),
        ({"status": "SUCCESS", "batch_id": "acb_1"}, "unknown event status"),
        ({"status": "success", "batch_id": "acb_2", "summary": {}}, "event for batch 'acb_2'"),
        ({"status": "success", "batch_id": "acb_1"}, "without a summary"),
    ],
)
def test_trigger_events_outside_the_allow_list_fail_closed(event: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        verdict_from_event(event, "acb_1")


@pytest.mark.parametrize("outcome", ["success", "failure", "timeout", "error"])
def test_one_vocabulary_from_verdict_to_event_and_back(outcome: Any) -> None:
    verdict = Verdict(outcome, "m", {"batch_id": "acb_1"}, retriable=outcome == "error")
    event = trigger_event(verdict, "acb_1")
    assert event["status"] == outcome
    assert verdict_from_event(event, "acb_1") == verdict


def test_a_timeout_event_without_a_message_gets_the_timeout_message() -> None:
    verdict = verdict_from_event({"status": "timeout", "batch_id": "acb_1"}, "acb_1")
    assert verdict.outcome == "timeout" and "did not settle before the wait's deadline" in verdict.message


class WaitingOperator(CallBatchWaitMixin, BaseOperator):
    """What issue 5's create operator does after creating its batch: publish the id, then wait."""

    def __init__(self, *, batch_id: str, deferrable: bool = False, **kwargs: Any) -> None:
        super().__init__(max_consecutive_failures=1, **kwargs)
        self.batch_id = batch_id
        self.deferrable = deferrable
        self.slept: list[float] = []
        self._sleep = self.slept.append

    def execute(self, context: Any) -> Any:
        self.publish_batch(context, self.batch_id, WAITING_BATCH_ID_XCOM_KEY)
        if self.deferrable:
            return self.poke_then_defer(self.batch_id, poll_interval=5, timeout=600)
        return self.wait_in_worker(self.batch_id, poll_interval=5, timeout=600)


class _TI:
    def __init__(self) -> None:
        self.task_id = "create"
        self.map_index = -1
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def xcom_pull(self, task_ids: str, key: str, map_indexes: int | None = None) -> Any:
        # Airflow returns every mapped instance's value unless map_indexes names this one.
        assert task_ids == self.task_id and map_indexes == self.map_index, "only its own XComs"
        return self.xcom.get(key)


def test_an_operator_waits_in_the_worker_with_the_same_decisions(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=2, call_seconds=(30.0, 30.0), outcomes={"completed": 1.0})
    sim.inject("GET", f"/agents/calls/batches/{batch_id}", Fault(drop=True), times=5)  # one failed poll
    sim.clock.tick_per_request = 20
    operator = WaitingOperator(task_id="create", batch_id=batch_id)
    operator.hook._sleep = sleeps
    try:
        summary = operator.execute({"ti": _TI()})
    finally:
        sim.clock.tick_per_request = 0
    assert summary == CallBatch.model_validate(sim.batch(batch_id)).summary()
    assert operator.slept and set(operator.slept) == {5}


def test_an_operator_gives_up_after_its_failure_budget(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    operator = WaitingOperator(task_id="create", batch_id=batch_id)
    operator.hook._sleep = sleeps
    cartesia_simulator.inject("GET", f"/agents/calls/batches/{batch_id}", Fault.server_error(502), times=10)
    with pytest.raises(CallBatchWaitError, match="2 polls in a row failed"):
        operator.execute({"ti": _TI()})


def test_an_operator_times_out_in_the_worker(cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str) -> None:
    batch_id = cartesia_simulator.seed_batch(recipients=1, call_seconds=(1e5, 1e5), outcomes={"completed": 1.0})
    operator = WaitingOperator(task_id="create", batch_id=batch_id)
    with pytest.raises(AirflowSensorTimeout, match="did not settle"):
        operator.wait_in_worker(batch_id, poll_interval=0.01, timeout=0.05)


def test_an_operator_defers_and_resumes_from_its_published_batch_id(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    batch_id = cartesia_simulator.seed_batch(recipients=1, call_seconds=(1e5, 1e5), outcomes={"completed": 1.0})
    operator = WaitingOperator(task_id="create", batch_id=batch_id, deferrable=True)
    context = {"ti": _TI()}
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, CallBatchTrigger)
    assert (trigger.batch_id, trigger.poll_interval, trigger.criteria) == (batch_id, 5.0, operator.wait_criteria)

    summary = {"batch_id": batch_id, "status": "completed"}
    ok = {"status": "success", "batch_id": batch_id, "summary": summary}
    assert operator.execute_complete(context, ok) == summary
    assert context["ti"].xcom[CALL_BATCH_URL_XCOM_KEY].endswith(f"/agents/calls/batches/{batch_id}")
    with pytest.raises(AirflowFailException, match="ended"):
        operator.execute_complete(context, {"status": "failure", "batch_id": batch_id, "message": "ended"})
    with pytest.raises(AirflowException, match="unknown event status 'failed'"):
        operator.execute_complete(context, {"status": "failed", "batch_id": batch_id, "message": "ended"})
    with pytest.raises(AirflowException, match="event for batch"):
        operator.execute_complete(context, {**ok, "batch_id": "acb_other"})


def test_a_watch_keeps_counters_learns_the_agent_and_reads_the_list_only_when_cheaper() -> None:
    from airflow_provider_cartesia.models import CallBatchRecipient

    watch = BatchWatch("acb_1", WaitCriteria(), _Log())
    assert watch.reads_list() is False  # the agent is not known before the first read
    big = _batch(status="in_progress", total_calls_scheduled=5000, total_calls_dispatched=10, total_calls_finished=5)
    recipients = [CallBatchRecipient(id=f"r{i}", status="completed") for i in range(3)]
    big = big.model_copy(update={"agent_id": "agent_1", "created_at": NOW, "recipients": recipients})
    watch.observe(big)
    assert (watch.agent_id, watch.created_at) == ("agent_1", NOW)
    assert watch.last_batch is not None and watch.last_batch.recipients is None  # never kept between polls
    assert watch.last_summary is not None and watch.last_summary["recipient_status_counts"] == {"completed": 3}
    assert watch.reads_list() is True
    small = BatchWatch("acb_2", WaitCriteria(), _Log(), agent_id="agent_1")
    assert small.reads_list() is True  # agent known up front: the list from the first look
    small.observe(_batch(status="in_progress", total_calls_scheduled=99))
    assert small.reads_list() is False  # a GET of 99 recipients is smaller than a page of the list


def test_the_list_answer_is_confirmed_by_a_get_when_it_ends_the_wait_or_is_missing() -> None:
    watch = BatchWatch("acb_1", WaitCriteria(), _Log())
    assert watch.needs_full_read(None) is True
    running = _batch(status="completed", total_calls_dispatched=2, total_calls_finished=1)
    assert watch.needs_full_read(running) is False
    assert watch.needs_full_read(running.model_copy(update={"total_calls_finished": 2})) is True
    assert watch.needs_full_read(_batch(status="failed", total_calls_dispatched=0)) is True
