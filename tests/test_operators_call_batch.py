"""CreateCallBatchOperator and CancelCallBatchOperator over real HTTP against the simulator.

Direct ``execute()`` calls stand in for one try of a task instance: a small stand-in TI carries the
identity (dag_id, task_id, run_id, map_index, try_number) and collects XComs; a "retry" or a
"cleared task" is a fresh operator executed with the same identity and a higher try number.
``dag.test()`` runs the real thing: a try killed mid-create and retried, a cleared run, and
``wait_for_completion`` in poke and deferrable modes. Nothing is mocked: every request goes to the
simulator, whose state (batches, request log) is what the assertions read.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
from airflow.sdk import DAG

from airflow_provider_cartesia.compat import AirflowFailException, AirflowSkipException
from airflow_provider_cartesia.exceptions import CartesiaCancelError, CartesiaServerError
from airflow_provider_cartesia.idempotency import (
    CLOCK_SKEW_MARGIN,
    Campaign,
    recipients_fingerprint,
    task_instance_key,
)
from airflow_provider_cartesia.models import CallBatch
from airflow_provider_cartesia.operators.call_batch import (
    CANCELLED_XCOM_KEY,
    VERIFY_DELAY,
    CancelCallBatchOperator,
    CreateCallBatchOperator,
)
from airflow_provider_cartesia.testing import CartesiaSimulator, Fault
from airflow_provider_cartesia.testing.dag_test import run_dag_test
from tests.helpers import SleepRecorder, cartesia_connection_json

BATCHES = "/agents/calls/batches"
AGENT = "agent_1"
RECIPIENTS = [
    {"to_number": "+14155550100", "metadata": {"customer_id": "c1", "tier": "gold"}},
    {"to_number": "+14155550101", "metadata": {"customer_id": "c2"}},
    {"to_number": "+442071838750"},
]


def _numbers(count: int) -> list[dict[str, Any]]:
    return [{"to_number": f"+1415{5_000_000 + i:07d}", "metadata": {"row": i}} for i in range(count)]


class FakeTI:
    """The slice of a RuntimeTaskInstance the operator touches: identity, try number, start, XCom."""

    def __init__(
        self, run_id: str = "scheduled__2026-06-01T00:00:00+00:00", map_index: int = -1, try_number: int = 1
    ) -> None:
        self.dag_id = "campaigns"
        self.task_id = "create"
        self.run_id = run_id
        self.map_index = map_index
        self.try_number = try_number
        self.start_date = datetime.now(timezone.utc)
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def xcom_pull(self, task_ids: str, key: str = "return_value", map_indexes: int | None = None) -> Any:
        assert task_ids == self.task_id and map_indexes in (None, self.map_index), "only its own XComs"
        return self.xcom.get(key)

    def retry(self) -> FakeTI:
        """The same task instance's next try (a retry, or a clear): same identity, no XComs yet."""
        return FakeTI(self.run_id, self.map_index, self.try_number + 1)


def _context(ti: FakeTI, run_after: datetime) -> Any:
    return {"ti": ti, "run_id": ti.run_id, "dag_run": SimpleNamespace(run_after=run_after)}


@pytest.fixture
def run_after(cartesia_simulator: CartesiaSimulator) -> datetime:
    """The DAG run's run_after: a minute before the simulator's now (batches are created after it)."""
    return cartesia_simulator.clock.now() - timedelta(minutes=1)


@pytest.fixture
def noretry_conn(cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A Cartesia connection whose hook never retries: each injected fault is one failed request."""
    monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_NORETRY", cartesia_connection_json(cartesia_simulator, max_retries=0))
    return "cartesia_noretry"


def _op(
    conn_id: str = "cartesia_default", sleeps: SleepRecorder | None = None, **kwargs: Any
) -> CreateCallBatchOperator:
    args: dict[str, Any] = {
        "task_id": "create",
        "name": "Spring renewals",
        "agent_id": AGENT,
        "from_number_id": "pn_1",
        "cartesia_conn_id": conn_id,
    }
    if "recipients_sql" not in kwargs:
        args["recipients"] = RECIPIENTS
    op = CreateCallBatchOperator(**{**args, **kwargs})
    if sleeps is not None:
        op._sleep = sleeps
        op.hook._sleep = sleeps
    return op


def _name(ti: FakeTI, recipients: list[dict[str, Any]] = RECIPIENTS, part: int = 1, parts: int = 1) -> str:
    key = task_instance_key(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
    return Campaign(key, None, recipients_fingerprint(recipients), parts).part_name("Spring renewals", part)


def _no_personal_data(*values: Any) -> None:
    text = json.dumps(values, default=str)
    assert "+1415" not in text and "+4420" not in text and "customer_id" not in text


# -- creating once ---------------------------------------------------------------------------------


def test_creates_one_tagged_batch_and_returns_its_id(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    sim = cartesia_simulator
    ti = FakeTI()
    when = datetime.now(timezone.utc) + timedelta(hours=3)

    batch_id = _op(target_concurrency_limit=2, ringing_timeout_seconds=30, scheduled_at=when.isoformat()).execute(
        _context(ti, run_after)
    )

    assert sim.batch_ids() == [batch_id]
    created = sim.batch(batch_id)
    assert created["name"] == _name(ti)
    assert created["target_concurrency_limit"] == 2
    assert created["scheduled_at"].startswith(when.strftime("%Y-%m-%dT%H:%M:%S"))
    assert [(r["to_number"], r.get("metadata")) for r in created["recipients"]] == [
        (r["to_number"], r.get("metadata")) for r in RECIPIENTS
    ]
    assert [(r.method, r.path) for r in sim.requests] == [("GET", BATCHES), ("POST", BATCHES)]
    assert sim.requests[0].query == {"agent_id": AGENT, "limit": "100"}
    assert ti.xcom == {
        "cartesia_batch_ids": [batch_id],
        "cartesia_batch_id": batch_id,
        "cartesia_batch_url": f"https://play.cartesia.ai/agents/calls/batches/{batch_id}",
    }
    _no_personal_data(batch_id, ti.xcom)


def test_create_response_dropped_after_the_server_accepted_it_is_adopted_in_the_same_try(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    sim = cartesia_simulator
    sim.inject("POST", BATCHES, Fault(drop_after_processing=True))

    batch_id = _op().execute(_context(FakeTI(), run_after))

    assert sim.batch_ids() == [batch_id]
    assert sim.count("POST", BATCHES) == 1, "a create whose answer was lost is never resent"
    assert [(r.method, r.path) for r in sim.requests] == [("GET", BATCHES), ("POST", BATCHES), ("GET", BATCHES)]


def test_create_response_dropped_then_the_retry_adopts_the_batch(
    noretry_conn: str, cartesia_simulator: CartesiaSimulator, run_after: datetime, sleeps: SleepRecorder
) -> None:
    """Try 1: the batch is created but the answer is lost and Cartesia cannot be listed; try 2 re-attaches."""
    sim = cartesia_simulator
    sim.inject("GET", BATCHES, Fault(headers={"X-Sim": "first lookup passes"}))
    sim.inject("POST", BATCHES, Fault(drop_after_processing=True))
    sim.inject("GET", BATCHES, Fault.server_error(503), times=2)
    ti = FakeTI()

    with pytest.raises(AirflowFailException) as info:
        _op(noretry_conn, sleeps).execute(_context(ti, run_after))
    assert "may have reached Cartesia, but could not list the batches" in str(info.value)
    assert f"Look for a batch named {_name(ti)!r}" in str(info.value)
    assert sleeps.waits == [VERIFY_DELAY]
    assert sim.batch_count() == 1 and sim.pending_faults() == 0

    retry = ti.retry()
    batch_id = _op(noretry_conn, sleeps).execute(_context(retry, run_after))

    assert sim.batch_ids() == [batch_id], "exactly one batch: the retry adopted it"
    assert sim.count("POST", BATCHES) == 1
    assert retry.xcom["cartesia_batch_ids"] == [batch_id]


def test_gateway_error_on_create_is_looked_up_not_resent_and_fails_without_retry(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime, sleeps: SleepRecorder
) -> None:
    sim = cartesia_simulator
    sim.inject("POST", BATCHES, Fault.html(502))  # the proxy never forwarded it: no batch exists
    ti = FakeTI()

    with pytest.raises(AirflowFailException) as info:
        _op(sleeps=sleeps).execute(_context(ti, run_after))

    message = str(info.value)
    assert "may have reached Cartesia, but it is not listed. It was not sent again" in message
    assert "then clear this task: it adopts the batch if it exists, and creates it otherwise" in message
    assert sim.count("POST", BATCHES) == 1 and sim.count("GET", BATCHES) == 3  # before, and two looks after
    assert sleeps.waits == [VERIFY_DELAY]
    assert sim.batch_count() == 0

    # The user checked Cartesia and cleared the task: the next try finds nothing and creates it.
    batch_id = _op(sleeps=sleeps).execute(_context(ti.retry(), run_after))
    assert sim.batch_ids() == [batch_id] and sim.count("POST", BATCHES) == 2


def test_unreadable_success_body_is_adopted_not_resent(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    sim = cartesia_simulator
    sim.inject("POST", BATCHES, Fault(malformed_json=True))
    batch_id = _op().execute(_context(FakeTI(), run_after))
    assert sim.batch_ids() == [batch_id] and sim.count("POST", BATCHES) == 1


def test_a_definite_server_error_fails_with_retries_and_the_retry_creates(
    noretry_conn: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    """500 is Cartesia saying "the batch could not be created": a retry looks first, finds nothing, creates."""
    sim = cartesia_simulator
    sim.inject("POST", BATCHES, Fault.server_error(500))
    ti = FakeTI()
    with pytest.raises(CartesiaServerError):
        _op(noretry_conn).execute(_context(ti, run_after))
    assert sim.batch_count() == 0
    batch_id = _op(noretry_conn).execute(_context(ti.retry(), run_after))
    assert sim.batch_ids() == [batch_id]


def test_retried_and_cleared_tries_reattach_and_other_runs_or_map_indexes_create(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    sim = cartesia_simulator
    ti = FakeTI()
    first = _op().execute(_context(ti, run_after))
    again = ti.retry()
    assert _op().execute(_context(again, run_after)) == first
    assert _op().execute(_context(again.retry(), run_after)) == first
    assert sim.count("POST", BATCHES) == 1

    other_run = _op().execute(_context(FakeTI(run_id="scheduled__2026-06-02T00:00:00+00:00"), run_after))
    mapped = [_op().execute(_context(FakeTI(map_index=i), run_after)) for i in (0, 1)]
    assert len({first, other_run, *mapped}) == 4
    assert sim.batch_count() == 4


def test_the_scan_pages_past_newer_batches_and_stops_at_the_run_cutoff(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    sim = cartesia_simulator
    now = sim.clock.now()
    ti = FakeTI()
    # Far older than the run: read no further than the first of them (no 3rd page).
    for i in range(150):
        sim.seed_batch(
            name=f"old {i}",
            agent_id=AGENT,
            recipients=1,
            created_at=run_after - CLOCK_SKEW_MARGIN - timedelta(hours=1, seconds=i),
        )
    mine = sim.seed_batch(name=_name(ti), agent_id=AGENT, recipients=1, created_at=now - timedelta(seconds=30))
    for i in range(120):
        sim.seed_batch(name=f"newer {i}", agent_id=AGENT, recipients=1, created_at=now - timedelta(seconds=20 - i / 10))
    sim.seed_batch(name=_name(ti), agent_id="agent_other", recipients=1)  # another agent's: never listed

    assert _op().execute(_context(ti.retry(), run_after)) == mine
    assert sim.count("POST", BATCHES) == 0
    assert sim.count("GET", BATCHES) == 2  # 100 newer, then 20 newer + ours (found: stop)

    # A first try reads every batch down to the cutoff (the 2nd page reaches it), no further, then creates.
    assert _op().execute(_context(FakeTI(run_id="other"), run_after)) != mine
    assert sim.count("GET", BATCHES) == 4 and sim.count("POST", BATCHES) == 1


def test_a_changed_recipient_list_adopts_the_earlier_batch_and_sends_nothing(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    sim = cartesia_simulator
    ti = FakeTI()
    first = _op().execute(_context(ti, run_after))
    changed = [*RECIPIENTS, {"to_number": "+14155550199"}]
    assert _op(recipients=changed).execute(_context(ti.retry(), run_after)) == first
    assert sim.count("POST", BATCHES) == 1
    assert len(sim.batch(first)["recipients"]) == len(RECIPIENTS)


# -- validation before anything is sent --------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipients", "expected"),
    [
        ([RECIPIENTS[0], {"to_number": "4155550101"}], "recipient #2: to_number is not E.164 (4155…)"),
        ([*RECIPIENTS, RECIPIENTS[0]], "recipient #4: to_number repeats recipient #1 (+141…)"),
        ([{"to_number": "+14155550100", "metadata": "gold"}], "recipient #1: metadata must be a JSON object"),
        ({"to_number": "+14155550100"}, "recipients must be a list of {to_number, metadata} objects, got a dict"),
        ("+14155550100", "recipients rendered to text that is not JSON"),
        ([], "there are none; a batch needs at least one recipient"),
        (
            [{"to_number": "+" + "".join(chr(0xFF10 + int(d)) for d in "14155550100")}],
            "recipient #1: to_number is not E",
        ),
        ([{"to_number": "+14155550100", "metadata": {"n": "a\x00"}}], "holds a NUL character"),
        ("[" * 100_000 + "]" * 100_000, "recipients rendered to JSON text nested too deeply to read"),
    ],
)
def test_invalid_recipients_fail_before_any_request(
    recipients: Any, expected: str, cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    with pytest.raises(AirflowFailException) as info:
        _op(recipients=recipients).execute(_context(FakeTI(), run_after))
    assert expected in str(info.value)
    assert str(info.value).endswith("No call batch was created")
    assert "4155550100" not in str(info.value) and "4155550101" not in str(info.value)
    assert cartesia_simulator.requests == []


def test_invalid_recipients_on_a_retry_name_what_earlier_tries_created(
    noretry_conn: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    """Try 1 creates part 1 of 2 and fails; try 2's list (another query result) is invalid: it says what exists."""
    sim = cartesia_simulator
    sim.inject("POST", BATCHES, Fault(headers={"X-Sim": "part 1 passes"}))
    sim.inject("POST", BATCHES, Fault.server_error(500))
    ti = FakeTI()
    with pytest.raises(CartesiaServerError):
        _op(noretry_conn, recipients=_numbers(5001)).execute(_context(ti, run_after))
    (part1,) = sim.batch_ids()

    with pytest.raises(AirflowFailException) as info:
        _op(noretry_conn, recipients=[{"to_number": "4155550100"}]).execute(_context(ti.retry(), run_after))

    assert str(info.value).endswith(
        f"This try created no call batch; earlier tries of this task created: {part1} (part 1 of 2)"
    )
    assert sim.count("POST", BATCHES) == 2


# -- Cartesia refusing a recipient (it documents no metadata limit: its own 400 decides) ----------------

OVERSIZED = {"notes": "x" * 10_000}  # over the simulator's metadata limit; Cartesia documents none


def test_a_recipient_cartesia_refuses_is_named_by_position(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    """The provider sends metadata of any size; Cartesia's 400 about ``recipients[3]`` names recipient #4."""
    recipients = [*RECIPIENTS, {"to_number": "+14155550109", "metadata": OVERSIZED}]

    with pytest.raises(AirflowFailException) as info:
        _op(recipients=recipients).execute(_context(FakeTI(), run_after))

    message = str(info.value)
    assert message.startswith("Cartesia refused recipient #4 (+141…) of call batch 'Spring renewals [af:")
    assert "recipients[3].metadata" in message
    assert "4155550109" not in message and "xxxx" not in message
    assert cartesia_simulator.count("POST", BATCHES) == 1 and cartesia_simulator.batch_ids() == []


def test_a_split_campaign_refused_in_a_later_part_says_which_parts_exist(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    sim = cartesia_simulator
    recipients = _numbers(5001)
    recipients[3999] = {"to_number": recipients[3999]["to_number"], "metadata": OVERSIZED}  # in part 2

    with pytest.raises(AirflowFailException) as info:
        _op(recipients=recipients).execute(_context(FakeTI(), run_after))

    (part1,) = sim.batch_ids()
    message = str(info.value)
    assert message.startswith("Cartesia refused recipient #4000 (+141…) of call batch 'Spring renewals (2/2) [af:")
    assert message.endswith(f"Of this campaign's 2 call batches, created: part 1 ({part1}); not created: part 2")
    assert sim.count("POST", BATCHES) == 2


def test_a_split_campaign_failing_in_a_later_part_logs_which_parts_exist(
    noretry_conn: str, cartesia_simulator: CartesiaSimulator, run_after: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    """A retryable failure keeps its error (the retry adopts part 1); the log says what exists."""
    from structlog.testing import capture_logs

    sim = cartesia_simulator
    sim.inject("POST", BATCHES, Fault(headers={"X-Sim": "part 1 passes"}))
    sim.inject("POST", BATCHES, Fault.server_error(503))

    with capture_logs() as logs, pytest.raises(CartesiaServerError):
        _op(noretry_conn, recipients=_numbers(5001)).execute(_context(FakeTI(), run_after))

    (part1,) = sim.batch_ids()
    errors = [
        str(e["event"]) % e.get("positional_args", ()) if e.get("positional_args") else str(e["event"])
        for e in logs
        if e["log_level"] == "error"
    ]
    # Airflow 3.0's operator logger is a standard library one (structlog from 3.1).
    errors += [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        f"Of this campaign's 2 call batches, created: part 1 ({part1}); not created: part 2; a retry adopts" in e
        for e in errors
    ), logs


def test_recipients_as_json_text_are_accepted(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    batch_id = _op(recipients=json.dumps(RECIPIENTS)).execute(_context(FakeTI(), run_after))
    assert cartesia_simulator.batch(batch_id)["total_calls_scheduled"] == 3


def test_no_recipients_can_skip(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    with pytest.raises(AirflowSkipException, match="No recipients"):
        _op(recipients=[], skip_if_no_recipients=True).execute(_context(FakeTI(), run_after))
    assert cartesia_simulator.requests == []


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"ringing_timeout_seconds": 4}, "ringing_timeout_seconds must be 5 to 80, got 4"),
        ({"ringing_timeout_seconds": 81}, "ringing_timeout_seconds must be 5 to 80"),
        ({"max_call_duration_minutes": 0}, "max_call_duration_minutes must be 1 to 480"),
        ({"max_call_duration_minutes": 481}, "max_call_duration_minutes must be 1 to 480"),
        ({"target_concurrency_limit": 0}, "target_concurrency_limit must be at least 1"),
        ({"target_concurrency_limit": True}, "target_concurrency_limit must be an integer"),
        ({"region": "us"}, "region must be one of US, EU, APAC"),
        ({"scheduled_at": datetime(2026, 6, 1)}, "has no time zone"),
        ({"recipients": RECIPIENTS, "recipients_sql": "SELECT 1"}, "give exactly one of recipients and recipients_sql"),
        ({"recipients": None}, "give exactly one of recipients and recipients_sql"),
        ({"recipients": None, "recipients_sql": "SELECT 1"}, "recipients_sql needs warehouse_conn_id"),
        ({"poke_interval": 0}, "poke_interval must be positive"),
        ({"wait_for": "done"}, "wait_for must be one of"),
        ({"success_statuses": "completed"}, "success_statuses must be a list of statuses"),
        ({"failure_statuses": "failed"}, "failure_statuses must be a list of statuses"),
    ],
)
def test_bad_options_fail_when_the_dag_is_parsed(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        _op(**kwargs)


@pytest.mark.parametrize(
    ("scheduled_at", "expected"),
    [
        (lambda now: (now - timedelta(minutes=1)).isoformat(), "is not in the future"),
        (lambda now: (now + timedelta(days=31)).isoformat(), "is more than 30 days ahead"),
        (lambda now: "tomorrow at nine", "is not an RFC 3339 date-time"),
        (lambda now: "2026-06-15T16:00:00", "has no time zone"),
    ],
)
def test_bad_scheduled_at_fails_before_any_request(
    scheduled_at: Any, expected: str, cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    with pytest.raises(AirflowFailException, match=expected):
        _op(scheduled_at=scheduled_at(datetime.now(timezone.utc))).execute(_context(FakeTI(), run_after))
    assert cartesia_simulator.requests == []


def test_a_retry_after_scheduled_at_passed_still_adopts_what_exists(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    sim = cartesia_simulator
    ti = FakeTI()
    when = datetime.now(timezone.utc) + timedelta(seconds=60)
    first = _op(scheduled_at=when).execute(_context(ti, run_after))
    late = _op(scheduled_at=when - timedelta(hours=1))  # as if the try ran after scheduled_at
    assert late.execute(_context(ti.retry(), run_after)) == first
    other = FakeTI(run_id="other")
    with pytest.raises(AirflowFailException, match="is not in the future"):
        late.execute(_context(other.retry(), run_after))  # nothing to adopt: a later try still refuses
    assert sim.count("POST", BATCHES) == 1


# -- more than 5,000 recipients ----------------------------------------------------------------------


def test_5001_recipients_become_two_named_batches_and_a_retry_creates_only_the_missing_part(
    noretry_conn: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    sim = cartesia_simulator
    recipients = _numbers(5001)
    sim.inject("POST", BATCHES, Fault(headers={"X-Sim": "part 1 passes"}))
    sim.inject("POST", BATCHES, Fault.server_error(500))
    ti = FakeTI()

    with pytest.raises(CartesiaServerError):
        _op(noretry_conn, recipients=recipients).execute(_context(ti, run_after))
    (part1,) = sim.batch_ids()

    retry = ti.retry()
    ids = _op(noretry_conn, recipients=recipients).execute(_context(retry, run_after))

    assert isinstance(ids, list) and ids[0] == part1 and sim.batch_ids() == ids
    assert [sim.batch(i)["name"] for i in ids] == [_name(ti, recipients, 1, 2), _name(ti, recipients, 2, 2)]
    assert {k: retry.xcom[k] for k in ("cartesia_batch_ids", "cartesia_batch_id")} == {
        "cartesia_batch_ids": ids,
        "cartesia_batch_id": part1,
    }
    first, second = (sim.batch(i)["recipients"] for i in ids)
    assert (len(first), len(second)) == (2501, 2500)
    assert [r["to_number"] for r in first + second] == [r["to_number"] for r in recipients]
    assert sim.count("POST", BATCHES) == 3  # part 1, part 2 refused, part 2 on the retry


# -- recipients from SQL -----------------------------------------------------------------------------


@pytest.fixture
def sqlite_warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "crm.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE contacts (phone TEXT, customer_id INTEGER, tier TEXT, prefs TEXT, active INTEGER)")
    db.executemany(
        "INSERT INTO contacts VALUES (?, ?, ?, ?, ?)",
        [
            ("+14155550100", 1, "gold", '{"lang": "en"}', 1),
            ("+14155550101", 2, None, None, 1),
            ("+14155550102", 3, "blue", "{}", 0),
            ("not-a-number", 4, "blue", "{}", 2),
        ],
    )
    db.commit()
    db.close()
    monkeypatch.setenv("AIRFLOW_CONN_CRM", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


def test_recipients_from_a_sqlite_query(
    sqlite_warehouse: Path, cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    sql = (
        "SELECT phone AS to_number, prefs AS metadata, customer_id, tier FROM contacts "
        "WHERE active = ? ORDER BY customer_id"
    )
    op = _op(recipients=None, recipients_sql=sql, warehouse_conn_id="crm", recipients_sql_parameters=[1])
    batch_id = op.execute(_context(FakeTI(), run_after))
    assert [(r["to_number"], r["metadata"]) for r in cartesia_simulator.batch(batch_id)["recipients"]] == [
        ("+14155550100", {"lang": "en", "customer_id": 1, "tier": "gold"}),
        ("+14155550101", {"customer_id": 2, "tier": None}),
    ]


def test_a_bad_row_from_sql_fails_before_any_request(
    sqlite_warehouse: Path, cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    sql = "SELECT phone AS to_number FROM contacts ORDER BY customer_id"
    with pytest.raises(AirflowFailException) as info:
        _op(recipients=None, recipients_sql=sql, warehouse_conn_id="crm").execute(_context(FakeTI(), run_after))
    assert "recipients_sql on connection 'crm'" in str(info.value)
    assert "recipient #4: to_number is not E.164 (not-…)" in str(info.value)
    with pytest.raises(AirflowFailException) as info:
        _op(recipients=None, recipients_sql="SELECT phone FROM contacts", warehouse_conn_id="crm").execute(
            _context(FakeTI(), run_after)
        )
    assert str(info.value).startswith("recipients_sql on connection 'crm': Invalid recipients: the query returns no")
    assert cartesia_simulator.requests == []


@pytest.mark.postgres
def test_recipients_from_a_postgres_query(
    postgres_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    cartesia_conn_id: str,
    cartesia_simulator: CartesiaSimulator,
    run_after: datetime,
) -> None:
    import psycopg

    table = f"cb_contacts_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(postgres_uri)
    conn = {"conn_type": "postgres", "host": parts.hostname, "port": parts.port, "login": parts.username}
    conn |= {"password": parts.password, "schema": parts.path.lstrip("/")}
    monkeypatch.setenv("AIRFLOW_CONN_CRM_PG", json.dumps(conn))
    with psycopg.connect(postgres_uri, autocommit=True) as db:
        db.execute(f"CREATE TABLE {table} (to_number text, metadata jsonb, segment text, score numeric)")
        db.execute(
            f"INSERT INTO {table} VALUES (%s, %s, %s, %s), (%s, %s, %s, %s), (%s, NULL, %s, %s)",
            [
                "+14155550100",
                '{"customer_id": "c1"}',
                "spring",
                1.5,
                "+14155550101",
                "{}",
                "autumn",
                2,
                "+81312345678",
                "spring",
                3,
            ],
        )
    try:
        sql = f"SELECT to_number, metadata, score FROM {table} WHERE segment = %(segment)s ORDER BY score"
        op = _op(
            recipients=None,
            recipients_sql=sql,
            warehouse_conn_id="crm_pg",
            recipients_sql_parameters={"segment": "spring"},
        )
        batch_id = op.execute(_context(FakeTI(), run_after))
    finally:
        with psycopg.connect(postgres_uri, autocommit=True) as db:
            db.execute(f"DROP TABLE {table}")
    assert [(r["to_number"], r["metadata"]) for r in cartesia_simulator.batch(batch_id)["recipients"]] == [
        ("+14155550100", {"customer_id": "c1", "score": 1.5}),
        ("+81312345678", {"score": 3}),
    ]


# -- waiting in the worker (direct) and on_kill ------------------------------------------------------


def test_wait_for_completion_fails_as_the_sensor_does_when_the_batch_fails(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime, sleeps: SleepRecorder
) -> None:
    sim = cartesia_simulator
    sim.outcomes = {"pre_dial_failure": 1.0}
    sim.clock.tick_per_request = 30
    ti = FakeTI()
    with pytest.raises(AirflowFailException, match="failed"):
        _op(sleeps=sleeps, wait_for_completion=True, poke_interval=5).execute(_context(ti, run_after))
    (batch_id,) = sim.batch_ids()
    assert ti.xcom["cartesia_batch_ids"] == [batch_id], "the ids are published before the wait"
    assert "cartesia_batch_summary" not in ti.xcom


def test_on_kill_cancels_only_when_asked(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    sim = cartesia_simulator
    sim.dispatch_interval = 60.0
    keep = _op()
    kept = keep.execute(_context(FakeTI(run_id="keep"), run_after))
    keep.on_kill()
    assert sim.count("POST", f"{BATCHES}/*/cancel") == 0

    cancel = _op(cancel_on_kill=True)
    cancelled = cancel.execute(_context(FakeTI(run_id="cancel"), run_after))
    cancel.on_kill()
    assert sim.batch(cancelled)["status"] == "cancelled"
    assert sim.batch(kept)["status"] == "pending"
    _op(cancel_on_kill=True).on_kill()  # nothing created yet: nothing to cancel
    assert sim.count("POST", f"{BATCHES}/*/cancel") == 1


# -- CancelCallBatchOperator ---------------------------------------------------------------------------


def _cancel(batch_id: Any) -> tuple[Any, FakeTI]:
    ti = FakeTI()
    return CancelCallBatchOperator(task_id="cancel", batch_id=batch_id).execute({"ti": ti}), ti


def test_cancel_is_idempotent(cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator) -> None:
    sim = cartesia_simulator
    running = sim.seed_batch(recipients=3, call_seconds=(100.0, 200.0), outcomes={"completed": 1.0})
    sim.clock.advance(1.5)

    summary, ti = _cancel(running)
    assert summary == CallBatch.model_validate(sim.batch(running)).summary()
    assert summary["status"] == "cancelled"
    assert summary["recipient_status_counts"]["cancelled"] == 2
    assert ti.xcom == {
        "cartesia_batch_id": running,
        "cartesia_batch_url": f"https://play.cartesia.ai/agents/calls/batches/{running}",
    }
    assert sim.count("POST", f"{BATCHES}/*/cancel") == 1

    again, _ = _cancel(running)
    assert again == summary
    assert sim.count("POST", f"{BATCHES}/*/cancel") == 1, "already over: not cancelled again"
    _no_personal_data(summary)


def test_cancel_of_a_finished_batch_succeeds_without_cancelling(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator
) -> None:
    sim = cartesia_simulator
    done = sim.seed_batch(recipients=2, call_seconds=(1.0, 2.0), outcomes={"completed": 1.0})
    failed = sim.seed_batch(recipients=1, outcomes={"pre_dial_failure": 1.0})
    sim.clock.advance(600)
    summaries, _ = _cancel([done, failed])
    assert [s["status"] for s in summaries] == ["completed", "failed"]
    assert sim.count("POST", f"{BATCHES}/*/cancel") == 0


def test_cancel_of_an_unknown_batch_fails_without_retry(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator
) -> None:
    with pytest.raises(AirflowFailException, match="Could not cancel call batch acb_missing"):
        _cancel("acb_missing")
    assert cartesia_simulator.count() == 1


def test_cancel_retries_transient_errors_then_succeeds(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, sleeps: SleepRecorder
) -> None:
    sim = cartesia_simulator
    running = sim.seed_batch(recipients=3, call_seconds=(100.0, 200.0))
    sim.clock.advance(1.5)
    sim.inject("POST", f"{BATCHES}/*/cancel", Fault.server_error(503))
    op = CancelCallBatchOperator(task_id="cancel", batch_id=running)
    op.hook._sleep = sleeps
    assert op.execute({"ti": FakeTI()})["status"] == "cancelled"
    assert sim.count("POST", f"{BATCHES}/*/cancel") == 2


def test_cancel_of_a_list_tries_every_batch_then_names_those_it_could_not_cancel(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator
) -> None:
    """A 404 in the middle of the list stops nothing: the later batches are cancelled, then the task fails."""
    sim = cartesia_simulator
    first = sim.seed_batch(recipients=3, call_seconds=(100.0, 200.0))
    last = sim.seed_batch(recipients=3, call_seconds=(100.0, 200.0))
    sim.clock.advance(1.5)
    ti = FakeTI()
    op = CancelCallBatchOperator(task_id="cancel", batch_id=[first, "acb_missing", last])
    with pytest.raises(AirflowFailException, match=r"Could not cancel 1 of 3 call batches \(acb_missing\)") as info:
        op.execute({"ti": ti})
    assert "404" in str(info.value)
    assert sim.batch(first)["status"] == "cancelled" and sim.batch(last)["status"] == "cancelled"
    assert [s["batch_id"] for s in ti.xcom[CANCELLED_XCOM_KEY]] == [first, last]


def test_cancel_of_a_list_with_a_transient_failure_leaves_the_task_to_its_retries(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, sleeps: SleepRecorder
) -> None:
    """A 503 that outlasts the hook's retries on one batch: the others are still cancelled, and the
    error is not an AirflowFailException, so the task's retries try again (cancelling twice is harmless)."""
    sim = cartesia_simulator
    stuck, other = (sim.seed_batch(recipients=2, call_seconds=(100.0, 200.0)) for _ in range(2))
    sim.clock.advance(1.5)
    sim.inject("POST", f"{BATCHES}/{stuck}/cancel", Fault.server_error(503), times=50)
    op = CancelCallBatchOperator(task_id="cancel", batch_id=[stuck, other, "acb_gone"])
    op.hook._sleep = sleeps
    ti = FakeTI()
    with pytest.raises(CartesiaCancelError) as info:
        op.execute({"ti": ti})
    assert not isinstance(info.value, AirflowFailException)
    assert set(info.value.failures) == {stuck, "acb_gone"}
    assert f"Could not cancel 2 of 3 call batches ({stuck}, acb_gone)" in str(info.value)
    assert "503" in str(info.value) and "404" in str(info.value)
    assert sim.batch(other)["status"] == "cancelled" and sim.batch(stuck)["status"] != "cancelled"
    assert [s["batch_id"] for s in ti.xcom[CANCELLED_XCOM_KEY]] == [other]


# -- through dag.test(): a retry, a clear, and waiting in both modes -----------------------------------


def _dag(dag_id: str, **task_kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        CreateCallBatchOperator(
            task_id="create",
            name="Spring renewals",
            agent_id=AGENT,
            from_number_id="pn_1",
            **{"recipients": RECIPIENTS, **task_kwargs},
        )
    return dag


def _ti(dr: Any) -> Any:
    (ti,) = dr.get_task_instances()
    return ti


@pytest.mark.dagtest
def test_dag_test_worker_dies_mid_create_and_the_retry_adopts_the_batch(
    airflow_db: None, cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator
) -> None:
    """Try 1 is killed (execution_timeout) while its create is in flight; Cartesia creates the batch and
    the answer never arrives. Try 2 starts after retry_delay, finds the batch and adopts it.

    Margins a busy machine keeps: the create reaches the simulator within the 2 s timeout, is held
    1 s past it, and is created 2 s (less the time it took to arrive) before try 2 looks."""
    sim = cartesia_simulator
    sim.inject("POST", BATCHES, Fault(delay=3.0, drop_after_processing=True))
    dag = _dag(
        "cartesia_create_retry", retries=1, retry_delay=timedelta(seconds=3), execution_timeout=timedelta(seconds=2)
    )

    ti = _ti(run_dag_test(dag, run_after=sim.clock.now() - timedelta(minutes=1)))

    assert (str(ti.state), ti.try_number) == ("success", 2)
    (batch_id,) = sim.batch_ids()
    assert ti.xcom_pull(task_ids="create") == batch_id
    assert sim.count("POST", BATCHES) == 1
    assert [(r.method, r.path) for r in sim.requests] == [("GET", BATCHES), ("POST", BATCHES), ("GET", BATCHES)]
    assert ti.xcom_pull(task_ids="create", key="_link_CallBatchLink").endswith(f"/agents/calls/batches/{batch_id}")


@pytest.mark.dagtest
def test_dag_test_cleared_run_reattaches_and_a_new_run_creates(
    airflow_db: None, cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator
) -> None:
    sim = cartesia_simulator
    dag = _dag("cartesia_create_clear")
    day1 = datetime(2026, 6, 1, tzinfo=timezone.utc)
    run_after = sim.clock.now() - timedelta(minutes=1)

    first = _ti(run_dag_test(dag, logical_date=day1, run_after=run_after))
    # The same run_id again: dag.test() clears the run and runs the task anew (a new task-instance row).
    cleared = _ti(run_dag_test(dag, logical_date=day1, run_after=run_after))
    assert cleared.run_id == first.run_id and cleared.id != first.id
    (batch_id,) = sim.batch_ids()
    assert first.xcom_pull(task_ids="create") == cleared.xcom_pull(task_ids="create") == batch_id

    # The rendered `recipients` field (stored in the metadata DB, shown in the UI) holds no personal data.
    from airflow.models.renderedtifields import RenderedTaskInstanceFields

    rendered = RenderedTaskInstanceFields.get_templated_fields(cleared)
    assert rendered["recipients"].startswith("<3 recipient(s); not shown")
    _no_personal_data(rendered)

    new_run = _ti(run_dag_test(dag, logical_date=day1 + timedelta(days=1), run_after=run_after + timedelta(seconds=1)))
    assert new_run.run_id != first.run_id
    assert sim.batch_count() == 2 and new_run.xcom_pull(task_ids="create") == sim.batch_ids()[1]
    assert sim.count("POST", BATCHES) == 2


def test_recipients_field_renders_on_the_executing_copy_only_and_keeps_its_upstream() -> None:
    """Rendering fills the field of the copy that runs; the DAG's task keeps its template (for the next try)."""
    from airflow.sdk import task

    with DAG("cartesia_field", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:

        @task
        def upstream() -> list[dict[str, Any]]:
            return RECIPIENTS

        templated = CreateCallBatchOperator(
            task_id="templated",
            name="n",
            agent_id=AGENT,
            from_number_id="pn_1",
            recipients=[{"to_number": "+14155550100", "metadata": {"day": "{{ ds }}"}}],
        )
        pulled = CreateCallBatchOperator(
            task_id="pulled", name="n", agent_id=AGENT, from_number_id="pn_1", recipients=upstream()
        )
    assert pulled.upstream_task_ids == {"upstream"}  # the XComArg inside the field still orders the tasks
    assert str(templated.recipients) == "<1 recipient(s); not shown: phone numbers and metadata are personal data>"

    running = templated.prepare_for_execution()
    running.render_template_fields({"ds": "2026-06-01"}, dag.get_template_env())  # type: ignore[arg-type]

    assert running.recipients is not None and templated.recipients is not None
    assert running.recipients.value == [{"to_number": "+14155550100", "metadata": {"day": "2026-06-01"}}]
    assert templated.recipients.value == [{"to_number": "+14155550100", "metadata": {"day": "{{ ds }}"}}]


def _stored_rendered_fields(dag_id: str) -> dict[int, dict[str, Any]]:
    """Every row of Airflow's rendered_task_instance_fields table for ``dag_id``, by map index."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(RenderedTaskInstanceFields.map_index, RenderedTaskInstanceFields.rendered_fields).where(
                RenderedTaskInstanceFields.dag_id == dag_id, RenderedTaskInstanceFields.task_id == "create"
            )
        ).all()
    return {map_index: fields for map_index, fields in rows}


@pytest.mark.dagtest
@pytest.mark.parametrize("source", ["expand a literal", "expand an XComArg", "partial an XComArg", "unmapped"])
def test_dag_test_rendered_fields_hold_no_recipients(
    source: str, airflow_db: None, cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator
) -> None:
    """Mapped tasks render through another path than unmapped ones: neither stores a number or metadata."""
    from airflow.sdk import task

    sim = cartesia_simulator
    lists = [RECIPIENTS[:2], RECIPIENTS[2:]]
    dag_id = f"cartesia_rendered_{source.replace(' ', '_').lower()}"
    common = {"task_id": "create", "agent_id": AGENT, "from_number_id": "pn_1"}
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:

        @task
        def recipient_lists() -> list[list[dict[str, Any]]]:
            return lists

        @task
        def one_list() -> list[dict[str, Any]]:
            return RECIPIENTS

        if source == "expand a literal":
            CreateCallBatchOperator.partial(name="Spring", **common).expand(recipients=lists)
        elif source == "expand an XComArg":
            CreateCallBatchOperator.partial(name="Spring", **common).expand(recipients=recipient_lists())
        elif source == "partial an XComArg":
            CreateCallBatchOperator.partial(recipients=one_list(), **common).expand(name=["Spring", "Summer"])
        else:
            CreateCallBatchOperator(name="Spring", recipients=one_list(), **common)

    dr = run_dag_test(dag, run_after=sim.clock.now() - timedelta(minutes=1))

    assert {ti.task_id: str(ti.state) for ti in dr.get_task_instances() if ti.task_id == "create"} == {
        "create": "success"
    }
    stored = _stored_rendered_fields(dag_id)
    expected = [-1] if source == "unmapped" else [0, 1]
    assert sorted(stored) == expected
    counts = {
        "expand a literal": ["2", "1"],
        "expand an XComArg": ["2", "1"],
        "partial an XComArg": ["3", "3"],
        "unmapped": ["3"],
    }[source]
    for map_index, count in zip(expected, counts, strict=True):
        assert stored[map_index]["recipients"] == (
            f"<{count} recipient(s); not shown: phone numbers and metadata are personal data>"
        )
    _no_personal_data(stored)
    assert sim.batch_count() == len(expected)  # the recipients still reached Cartesia


@pytest.mark.dagtest
@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_dag_test_wait_for_completion(
    mode: str, airflow_db: None, cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator
) -> None:
    """One batch and a 5,001-recipient split, each awaited until every call ended, in both modes."""
    sim = cartesia_simulator
    sim.outcomes = {"completed": 1.0}
    sim.call_seconds = (100.0, 120.0)
    sim.dispatch_interval = 0.001
    sim.clock.tick_per_request = 30.0
    wait = {"wait_for_completion": True, "poke_interval": 0.05, "timeout": 60, "deferrable": mode == "deferrable"}
    with DAG(f"cartesia_create_wait_{mode}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        single = CreateCallBatchOperator(
            task_id="single", name="Spring", agent_id=AGENT, from_number_id="pn_1", recipients=RECIPIENTS, **wait
        )
        split = CreateCallBatchOperator(
            task_id="split", name="Spring", agent_id=AGENT, from_number_id="pn_1", recipients=_numbers(5001), **wait
        )
        single >> split

    dr = run_dag_test(dag, run_after=sim.clock.now() - timedelta(minutes=1))

    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert {k: str(ti.state) for k, ti in tis.items()} == {"single": "success", "split": "success"}
    single_id, *split_ids = sim.batch_ids()
    assert tis["single"].xcom_pull(task_ids="single") == single_id
    assert tis["split"].xcom_pull(task_ids="split") == split_ids and len(split_ids) == 2

    summary = tis["single"].xcom_pull(task_ids="single", key="cartesia_batch_summary")
    assert summary == CallBatch.model_validate(sim.batch(single_id)).summary()
    assert summary["total_calls_finished"] == summary["total_calls_dispatched"] == 3
    summaries = tis["split"].xcom_pull(task_ids="split", key="cartesia_batch_summary")
    assert [s["batch_id"] for s in summaries] == split_ids
    assert [s["total_calls_finished"] for s in summaries] == [2501, 2500]
    _no_personal_data(summary, summaries)

    # Each wait stopped at the first poll after its last call ended (the sensor's rule). The second
    # part ran alongside the first, so it may be over at its first poll.
    for batch_id in [single_id, *split_ids]:
        finished = sim.batch_times(batch_id).all_finished_at
        polls = [r.at for r in sim.requests if r.path == f"{BATCHES}/{batch_id}"]
        assert len([at for at in polls if at >= finished]) == 1, (batch_id, polls, finished)
        if batch_id != split_ids[1]:
            # While calls ran, the wait read the counters from the agent's list (no recipients).
            listed = [r.at for r in sim.requests if r.path == BATCHES and r.method == "GET" and r.query.get("agent_id")]
            assert any(at < finished for at in polls + listed), "polled while calls were still running"


def test_a_deferred_wait_on_a_split_resumes_part_by_part(
    cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator, run_after: datetime
) -> None:
    """Each resume judges its event as the sensor does, then waits for the next part; the state is in XCom."""
    from airflow_provider_cartesia.compat import TaskDeferred
    from airflow_provider_cartesia.triggers.call_batch import CallBatchTrigger

    sim = cartesia_simulator
    sim.call_seconds = (1000.0, 1001.0)
    ti = FakeTI()
    op = _op(recipients=_numbers(5001), wait_for_completion=True, deferrable=True, poke_interval=30)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(_context(ti, run_after))
    part1, part2 = ti.xcom["cartesia_batch_ids"]
    assert isinstance(deferred.value.trigger, CallBatchTrigger) and deferred.value.trigger.batch_id == part1
    assert ti.xcom["cartesia_batch_id"] == ti.xcom["cartesia_waiting_batch_id"] == part1
    assert ti.xcom["cartesia_batch_url"].endswith(part1)

    def event(batch_id: str) -> dict[str, Any]:
        summary = CallBatch.model_validate(sim.batch(batch_id)).summary()
        return {"status": "success", "batch_id": batch_id, "message": "settled", "summary": summary}

    first = event(part1)
    with pytest.raises(TaskDeferred) as deferred:
        _op(recipients=_numbers(5001), wait_for_completion=True, deferrable=True).execute_complete(
            _context(ti, run_after), first
        )
    assert deferred.value.trigger.batch_id == part2
    assert ti.xcom["cartesia_waiting_batch_id"] == part2 and ti.xcom["cartesia_batch_summary"] == [first["summary"]]
    assert ti.xcom["cartesia_batch_id"] == part1 and ti.xcom["cartesia_batch_url"].endswith(part2)

    second = event(part2)
    resumed = _op(recipients=_numbers(5001), wait_for_completion=True, deferrable=True)
    assert resumed.execute_complete(_context(ti, run_after), second) == [part1, part2]
    assert ti.xcom["cartesia_batch_summary"] == [first["summary"], second["summary"]]

    with pytest.raises(AirflowFailException, match="failed"):
        resumed.execute_complete(_context(ti, run_after), {**second, "status": "failure", "message": "failed"})
    with pytest.raises(Exception, match="unknown event status"):
        resumed.execute_complete(_context(ti, run_after), {**second, "status": "done"})


@pytest.mark.dagtest
def test_dag_test_mapped_deferred_waits_each_resume_with_their_own_batch(
    airflow_db: None, cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator
) -> None:
    """Two mapped instances defer, then resume: each finds the batch *it* published, not its sibling's."""
    sim = cartesia_simulator
    sim.outcomes = {"completed": 1.0}
    sim.call_seconds = (100.0, 120.0)
    sim.clock.tick_per_request = 30.0
    lists = [RECIPIENTS[:2], RECIPIENTS[2:]]
    with DAG("cartesia_create_mapped_wait", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        CreateCallBatchOperator.partial(
            task_id="create",
            name="Spring",
            agent_id=AGENT,
            from_number_id="pn_1",
            wait_for_completion=True,
            deferrable=True,
            poke_interval=0.05,
            timeout=60,
        ).expand(recipients=lists)

    dr = run_dag_test(dag, run_after=sim.clock.now() - timedelta(minutes=1))

    tis = sorted(dr.get_task_instances(), key=lambda t: t.map_index)
    assert [str(ti.state) for ti in tis] == ["success", "success"]
    ids = [ti.xcom_pull(task_ids="create", map_indexes=ti.map_index) for ti in tis]
    assert sorted(ids) == sorted(sim.batch_ids()) and len(set(ids)) == 2
    summaries = [ti.xcom_pull(task_ids="create", key="cartesia_batch_summary", map_indexes=ti.map_index) for ti in tis]
    assert [s["batch_id"] for s in summaries] == ids
