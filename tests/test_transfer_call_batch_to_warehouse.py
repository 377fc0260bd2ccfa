"""CallBatchToWarehouseOperator end to end: the Cartesia simulator into real SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from warehouse_engines import CONN_ID, ENGINES, Engine, json_value, make_engine, utc_value

from airflow_provider_cartesia.compat import AIRFLOW_V_3_1_PLUS
from airflow_provider_cartesia.exceptions import CartesiaWarehouseError, CartesiaWarehouseSchemaError
from airflow_provider_cartesia.models import CallBatch
from airflow_provider_cartesia.testing import CartesiaSimulator
from airflow_provider_cartesia.testing.dag_test import run_dag_test
from airflow_provider_cartesia.transfers.call_batch_to_warehouse import (
    CallBatchToWarehouseOperator,
    batches_updated_between,
    warehouse_table_asset,
)
from airflow_provider_cartesia.warehouse import get_warehouse_hook, parse_table_name, table_dataset

METADATA = {
    "customer": 'Zoë O\'Brien "the 3rd"',
    "notes": "line1\nline2\ttab \\ backslash",
    "nested": {"tags": ["vip", "日本語", "📞"], "score": 4.5, "ok": True, "none": None},
}


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    yield from make_engine(request.param, request, tmp_path)


def operator(engine: Engine, **kwargs: Any) -> CallBatchToWarehouseOperator:
    return CallBatchToWarehouseOperator(
        task_id="export", warehouse_conn_id=CONN_ID, table=kwargs.pop("table", engine.table), **kwargs
    )


def recipients(count: int, outcome: str = "completed", metadata: Any = None) -> list[dict[str, Any]]:
    return [
        {"to_number": f"+1415888{i:04d}", "metadata": metadata or {"i": i, **METADATA}, "outcome": outcome}
        for i in range(count)
    ]


def quick(sim: CartesiaSimulator, **kwargs: Any) -> str:
    """A batch whose calls all finish within two minutes of its admission."""
    kwargs.setdefault("recipients", recipients(3))
    return sim.seed_batch(dispatch_interval=1.0, call_seconds=(20, 30), outcomes={"completed": 1}, **kwargs)


# -- at parse time (no servers) ---------------------------------------------------------------


@pytest.mark.parametrize("table", ["x; DROP TABLE y", "a.b.c", "t--", '"t"', "1t", "t name", "s.t WHERE 1=1"])
def test_hostile_table_names_fail_the_dag_at_parse_time(table: str) -> None:
    with pytest.raises(CartesiaWarehouseSchemaError, match="not a valid name"):
        CallBatchToWarehouseOperator(task_id="t", warehouse_conn_id="w", table=table, batch_id="acb_1")


def test_a_templated_table_is_checked_when_rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "w.db")}))
    op = CallBatchToWarehouseOperator(task_id="t", warehouse_conn_id="warehouse", table="{{ params.t }}", batch_id="a")
    op.table = "t; DROP TABLE x"  # what a hostile template would render to
    from airflow_provider_cartesia.compat import AirflowFailException

    with pytest.raises(AirflowFailException, match="not a valid name"):
        op.execute({})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_id": "a", "batch_ids": ["b"]}, "not both"),
        ({"batch_id": "a", "updated_since": "2026-01-01T00:00:00+00:00"}, "only when no batch_id"),
        ({"batch_ids": ["a"], "agent_id": "agent_1"}, "agent_id select batches only when"),
        ({"include_transcript": True}, "include_calls"),
        ({"max_batch_age": timedelta(days=-1)}, "negative"),
        ({"table": "{{ params.t }}", "table_asset": True}, "literal table"),
    ],
)
def test_contradictory_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CallBatchToWarehouseOperator(task_id="t", warehouse_conn_id="w", **kwargs)


def test_table_asset_is_added_to_user_outlets() -> None:
    from airflow.sdk import Asset

    mine = Asset("s3://bucket/other")
    op = CallBatchToWarehouseOperator(
        task_id="t", warehouse_conn_id="dwh", table="analytics.calls", table_asset=True, outlets=[mine]
    )
    assert op.outlets == [mine, warehouse_table_asset("dwh", "analytics.calls")]
    assert warehouse_table_asset("dwh", "analytics.calls").uri == "cartesia-warehouse://dwh/analytics.calls"
    assert CallBatchToWarehouseOperator(task_id="u", warehouse_conn_id="dwh").outlets == []


def test_importing_the_operator_stays_light() -> None:
    """No driver, common-sql, requests or pydantic at DAG parse time (the shared hook mixin's module is fine)."""
    code = (
        "import sys, warnings, airflow.sdk; before = set(sys.modules); "
        "warnings.filterwarnings('error', category=DeprecationWarning, module='airflow_provider_cartesia'); "
        "import airflow_provider_cartesia.transfers.call_batch_to_warehouse; "
        "heavy = ('airflow.providers.common.sql', 'psycopg', 'MySQLdb', 'sqlite3', 'requests', 'pydantic'); "
        "print(sorted(n for n in set(sys.modules) - before if n.startswith(heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def listed(*specs: tuple[str, int, int]) -> list[CallBatch]:
    """Batches as the list endpoint gives them (newest created first): (id, created h, updated h)."""
    t0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
    return [
        CallBatch(id=i, created_at=t0 + timedelta(hours=c), last_updated_at=t0 + timedelta(hours=u))
        for i, c, u in specs
    ]


def test_window_selection_reads_past_newer_batches_and_stops_only_when_told() -> None:
    t0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
    since, before = t0 + timedelta(hours=10), t0 + timedelta(hours=11)
    batches = listed(
        ("after", 12, 12),  # created after the window: skipped, reading goes on
        ("edge_end", 11, 11),  # updated exactly at the end: excluded (half-open)
        ("inside", 10, 10),  # updated exactly at the start: included
        ("moved_on", 9, 12),  # updated in the window, then again later: the next window takes it
        ("old_active", 2, 10),  # created long before, updated in the window: included
        ("old", 1, 1),
    )
    consumed: list[str] = []

    def source() -> Iterator[CallBatch]:
        for b in batches:
            consumed.append(b.id)
            yield b

    assert [b.id for b in batches_updated_between(source(), since, before)] == ["inside", "old_active"]
    assert consumed == [b.id for b in batches], "without max_batch_age the whole list is read"
    consumed.clear()
    picked = [b.id for b in batches_updated_between(source(), since, before, max_batch_age=timedelta(hours=4))]
    assert picked == ["inside"]
    assert consumed == ["after", "edge_end", "inside", "moved_on", "old_active"], "stopped at the first too-old batch"


@pytest.mark.parametrize(
    ("conn", "table", "expected"),
    [
        ({"conn_type": "postgres", "host": "h", "schema": "dwh"}, "s.calls", ("postgres://h:5432", "dwh.s.calls")),
        ({"conn_type": "mysql", "host": "h", "port": 3307, "schema": "dwh"}, "calls", ("mysql://h:3307", "dwh.calls")),
        ({"conn_type": "sqlite", "host": "/data/x.db"}, "calls", ("sqlite:///data/x.db", "calls")),
        ({"conn_type": "generic", "host": "/data/x.db"}, "s.calls", ("sqlite:///data/x.db", "s.calls")),
    ],
)
def test_table_dataset_names_come_from_the_hooks_openlineage_info(
    conn: dict[str, Any], table: str, expected: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook's ``get_openlineage_database_info`` names PostgreSQL and MySQL tables (no database is
    reached for these: the schema is given, or MySQL has none); SQLite's hooks give no info."""
    monkeypatch.setenv("AIRFLOW_CONN_LINEAGE_DB", json.dumps(conn))
    assert table_dataset(get_warehouse_hook("lineage_db"), parse_table_name(table)) == expected


# -- end to end on each engine ----------------------------------------------------------------


def test_export_then_re_export_after_the_batch_changed(
    engine: Engine,
    cartesia_simulator: CartesiaSimulator,
    cartesia_conn_id: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = cartesia_simulator
    batch_id = quick(sim, recipients=recipients(6), name="Renewals — Zoë")
    other = quick(sim, recipients=recipients(2))
    caplog.set_level(logging.DEBUG)

    first = operator(engine, batch_id=batch_id).execute({})
    assert first == {
        "table": engine.table,
        "batch_ids": [batch_id],
        "rows_written": 6,
        "status_counts": {"queued": 6},
        "end_reason_counts": {"none": 6},
        "columns_added": [],
    }
    operator(engine, batch_ids=f"{other}").execute({})
    assert engine.count(batch_id) == 6

    sim.clock.advance(600)  # every call has ended
    second = operator(engine, batch_id=batch_id).execute({})
    assert second["status_counts"] == {"completed": 6}
    assert sum(second["end_reason_counts"].values()) == 6 and "none" not in second["end_reason_counts"]

    api = {r["id"]: r for r in sim.batch(batch_id)["recipients"]}
    names = "recipient_id, batch_name, batch_status, to_number, status, end_reason, agent_call_id, created_at, metadata"
    rows = engine.query(f"SELECT {names} FROM {engine.table} WHERE batch_id = ? ORDER BY recipient_id", (batch_id,))
    assert len(rows) == 6, "re-export replaced the rows: none duplicated"
    for rid, name, batch_status, number, status, end_reason, call_id, created, metadata in rows:
        r = api[rid]
        assert (name, batch_status) == ("Renewals — Zoë", "completed")
        assert (number, status, end_reason, call_id) == (
            r["to_number"],
            "completed",
            r["end_reason"],
            r["agent_call_id"],
        )
        assert utc_value(created) == datetime.fromisoformat(r["created_at"])
        assert json_value(metadata) == r["metadata"]
    assert engine.count(other) == 2, "another batch's rows are untouched"
    captured = capsys.readouterr()
    logs = caplog.text + captured.out + captured.err  # Airflow's structlog prints; stdlib logging is captured
    assert f"Batch {batch_id} (completed): 6 rows written" in logs, "the task's log is captured"
    for leak in ("+1415888", "Zoë O", "日本語"):
        assert leak not in logs


def test_a_failure_mid_write_keeps_the_previous_export(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    sim = cartesia_simulator
    batch_id = quick(sim, recipients=recipients(40))
    operator(engine, batch_id=batch_id).execute({})  # every recipient queued
    victim = sim.batch(batch_id)["recipients"][20]["id"]
    # A constraint the 21st row breaks once its call completed: the write fails in the middle.
    engine.execute(
        f"ALTER TABLE {engine.table} ADD CONSTRAINT no_victim "
        f"CHECK (status <> 'completed' OR recipient_id <> '{victim}')"
        if engine.name != "sqlite"
        else f"CREATE TRIGGER no_victim BEFORE INSERT ON {engine.table} WHEN NEW.status = 'completed' AND "
        f"NEW.recipient_id = '{victim}' BEGIN SELECT RAISE(ABORT, 'no victim'); END"
    )
    sim.clock.advance(3600)
    with pytest.raises(CartesiaWarehouseError) as caught:
        operator(engine, batch_id=batch_id).execute({})
    assert caught.value.batch_id == batch_id
    assert "+1415888" not in str(caught.value)
    assert engine.count(batch_id) == 40
    assert engine.query(f"SELECT DISTINCT status FROM {engine.table}") == [("queued",)]


def test_scheduled_mode_picks_exactly_the_batches_updated_in_the_interval(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    sim = cartesia_simulator
    w0 = sim.clock.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=4)
    w1 = w0 + timedelta(hours=1)
    far = w1 + timedelta(days=10)
    expected = {
        quick(
            sim,
            name="created before, dispatched in",
            created_at=w0 - timedelta(hours=3),
            scheduled_at=w0 + timedelta(minutes=10),
        ),
        quick(sim, name="inside", created_at=w0 + timedelta(minutes=5)),
        quick(sim, name="other agent", agent_id="agent_other", created_at=w0 + timedelta(minutes=20)),
        quick(sim, name="updated at the start", created_at=w0, scheduled_at=far),
    }
    excluded = {
        quick(sim, name="done before", created_at=w0 - timedelta(hours=3)),
        quick(sim, name="finishes after", created_at=w1 - timedelta(seconds=5)),
        quick(sim, name="updated at the end", created_at=w1, scheduled_at=far),
        quick(sim, name="created after", created_at=w1 + timedelta(minutes=5)),
    }
    sim.clock.advance_to(w1 + timedelta(minutes=30))
    for batch_id in expected | excluded:  # the premise, from the simulator's own view
        updated = datetime.fromisoformat(sim.batch(batch_id)["last_updated_at"])
        assert (w0 <= updated < w1) == (batch_id in expected), sim.batch(batch_id)["name"]

    summary = operator(engine).execute({"data_interval_start": w0, "data_interval_end": w1})
    assert set(summary["batch_ids"]) == expected
    assert summary["window"] == {"updated_since": w0.isoformat(), "updated_before": w1.isoformat()}
    assert summary["rows_written"] == 3 * len(expected)
    exported = {b for (b,) in engine.query(f"SELECT DISTINCT batch_id FROM {engine.table}")}
    assert exported == expected

    # One agent's batches, with the window given explicitly (templated text works the same).
    only = operator(engine, agent_id="agent_other", updated_since=w0.isoformat(), updated_before=w1).execute({})
    assert [sim.batch(b)["name"] for b in only["batch_ids"]] == ["other agent"]


def test_include_calls_keeps_the_latest_attempt_per_recipient(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, hook: Any
) -> None:
    sim = cartesia_simulator
    people = recipients(4)
    people[1]["outcome"] = "busy"
    people[3]["outcome"] = "pre_dial_failure"
    batch_id = sim.seed_batch(
        recipients=people, dispatch_interval=1.0, call_seconds=(20, 30), outcomes={"completed": 1}
    )
    sim.clock.advance(600)
    hook.retry_call_batch(batch_id)  # re-queues the busy and the pre-dial failure; both complete now
    sim.clock.advance(600)
    summary = operator(engine, batch_id=batch_id, include_calls=True, include_transcript=True).execute({})
    assert summary["columns_added"] == []
    api = {r["id"]: r for r in sim.batch(batch_id)["recipients"]}
    by_number = {r["to_number"]: rid for rid, r in api.items()}
    cols = "recipient_id, call_status, call_start_time, call_end_time, call_duration_seconds, call_summary, "
    rows = engine.query(f"SELECT {cols}call_attempts, call_transcript FROM {engine.table} ORDER BY recipient_id")
    got = {r[0]: r for r in rows}
    assert set(got) == set(api)
    for rid, r in api.items():
        call = sim.call(r["agent_call_id"])
        _, status, start, end, duration, summary_text, attempts, transcript = got[rid]
        assert status == call["status"] == "completed"
        assert utc_value(start) == datetime.fromisoformat(call["start_time"])
        assert utc_value(end) == datetime.fromisoformat(call["end_time"])
        assert duration == pytest.approx((utc_value(end) - utc_value(start)).total_seconds())  # type: ignore[operator]
        assert summary_text == call["summary"]
        assert json_value(transcript) == call["transcript"]
        retried = rid in (by_number[people[1]["to_number"]],)
        assert attempts == (2 if retried else 1), rid
    # The recipient that failed before dialing had no call record then: one call now.
    assert got[by_number[people[3]["to_number"]]][6] == 1


def test_add_missing_columns_widens_an_earlier_table(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    batch_id = quick(cartesia_simulator)
    operator(engine, batch_id=batch_id).execute({})
    from airflow_provider_cartesia.compat import AirflowFailException

    with pytest.raises(AirflowFailException, match="call_status"):
        operator(engine, batch_id=batch_id, include_calls=True).execute({})
    summary = operator(engine, batch_id=batch_id, include_calls=True, add_missing_columns=True).execute({})
    assert summary["columns_added"][:2] == ["call_status", "call_start_time"]
    assert engine.count(batch_id) == 3


def test_any_string_the_api_returns_is_exported(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    """NUL in the answer: PostgreSQL failed every try with 22P05 before. (A lone surrogate, which no engine
    stores, never gets this far: the hook's JSON parser refuses the answer.)"""
    from airflow_provider_cartesia.testing import Fault

    sim = cartesia_simulator
    batch_id = quick(sim)
    answer = sim.batch(batch_id)
    answer["name"] = "Renewals\x00"
    for r in answer["recipients"]:
        r["metadata"] = {"note": "a\x00b", "k\x00": ["\x00"], "日本語": "📞"}
    sim.inject("GET", f"/agents/calls/batches/{batch_id}", Fault(body=answer))
    assert operator(engine, batch_id=batch_id).execute({})["rows_written"] == 3
    stored = engine.query(f"SELECT batch_name, metadata FROM {engine.table} WHERE batch_id = ?", (batch_id,))
    nul = "\ufffd" if engine.name == "postgres" else "\x00"
    expected = {"note": f"a{nul}b", f"k{nul}": [nul], "日本語": "📞"}
    assert [(name, json_value(meta)) for name, meta in stored] == [(f"Renewals{nul}", expected)] * 3


# -- failures and lineage (SQLite only: the engine plays no part) ------------------------------


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_unknown_batch_fails_at_once_and_writes_nothing(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    from airflow_provider_cartesia.compat import AirflowFailException

    with pytest.raises(AirflowFailException, match="404"):
        operator(engine, batch_id="acb_missing").execute({})
    assert engine.count() == 0
    with pytest.raises(AirflowFailException, match="data interval"):
        operator(engine).execute({})


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
@pytest.mark.parametrize("field", ["batch_id", "batch_ids"])
def test_ids_that_render_to_none_fail_instead_of_exporting_the_window(
    field: str, engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    from airflow_provider_cartesia.compat import AirflowFailException

    operator(engine, batch_id=quick(cartesia_simulator)).execute({})
    quick(cartesia_simulator)  # a second batch, updated inside the window
    requests_before = len(cartesia_simulator.requests)
    op = operator(engine, **{field: "{{ ti.xcom_pull(task_ids='create', key='never_pushed') }}"})
    setattr(op, field, None)  # what rendering an XCom that was never pushed leaves
    window = {
        "data_interval_start": datetime(2000, 1, 1, tzinfo=timezone.utc),
        "data_interval_end": datetime.now(timezone.utc),
    }
    with pytest.raises(AirflowFailException, match="rendered to None"):
        op.execute(window)  # type: ignore[arg-type]
    assert engine.count() == 3, "only the first export's rows"
    assert len(cartesia_simulator.requests) == requests_before, "nothing was even listed"


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_an_answer_without_recipients_never_erases_the_rows(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    from airflow_provider_cartesia.exceptions import CartesiaResponseError
    from airflow_provider_cartesia.testing import Fault

    sim = cartesia_simulator
    batch_id = quick(sim)
    operator(engine, batch_id=batch_id).execute({})
    shape = {k: v for k, v in sim.batch(batch_id).items() if k != "recipients"}
    sim.inject("GET", f"/agents/calls/batches/{batch_id}", Fault(body=shape))
    with pytest.raises(CartesiaResponseError, match="without its recipients"):
        operator(engine, batch_id=batch_id).execute({})
    assert engine.count(batch_id) == 3
    bare = {"id": batch_id, "recipients": []}  # no counters either: still not a reason to erase
    sim.inject("GET", f"/agents/calls/batches/{batch_id}", Fault(body=bare))
    with pytest.raises(CartesiaResponseError, match="without its recipients"):
        operator(engine, batch_id=batch_id).execute({})
    assert engine.count(batch_id) == 3


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
@pytest.mark.parametrize("damage", ["truncated", "padded", "duplicated", "counter_zero"])
def test_an_answer_inconsistent_with_its_counters_never_replaces_the_rows(
    damage: str, engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    """10 recipients listed of 30 scheduled (a truncating proxy): refused, the 30 rows stay."""
    from airflow_provider_cartesia.exceptions import CartesiaResponseError
    from airflow_provider_cartesia.testing import Fault

    sim = cartesia_simulator
    batch_id = quick(sim, recipients=recipients(30))
    operator(engine, batch_id=batch_id).execute({})
    before = engine.rows()
    answer = sim.batch(batch_id)
    listed = answer["recipients"]
    damaged = {
        "truncated": {**answer, "recipients": listed[:10]},
        "padded": {**answer, "total_calls_scheduled": 29},
        "duplicated": {**answer, "recipients": [*listed[:29], listed[0]]},
        "counter_zero": {**answer, "total_calls_scheduled": 0},
    }[damage]
    sim.inject("GET", f"/agents/calls/batches/{batch_id}", Fault(body=damaged))
    expected = "more than once" if damage == "duplicated" else "contradicts itself"
    with pytest.raises(CartesiaResponseError, match=expected) as caught:
        operator(engine, batch_id=batch_id).execute({})
    assert "left as they were" in str(caught.value)
    assert engine.rows() == before and engine.count(batch_id) == 30
    assert operator(engine, batch_id=batch_id).execute({})["rows_written"] == 30, "the next answer is whole again"


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_a_zero_length_interval_continues_from_the_last_successful_run(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    from airflow_provider_cartesia.compat import AirflowFailException

    sim = cartesia_simulator
    t = sim.clock.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=3)
    recent = quick(sim, created_at=t - timedelta(minutes=50))
    quick(sim, created_at=t - timedelta(hours=2))
    sim.clock.advance_to(t + timedelta(minutes=10))
    # What CronTriggerTimetable (Airflow 3's default for cron strings) gives: a point, not an interval.
    point = {"data_interval_start": t, "data_interval_end": t}
    summary = operator(engine).execute({**point, "prev_data_interval_end_success": t - timedelta(hours=1)})
    assert summary["batch_ids"] == [recent]
    assert summary["window"]["updated_since"] == (t - timedelta(hours=1)).isoformat()
    with pytest.raises(AirflowFailException, match="single instant"):
        operator(engine).execute(point)
    explicit = operator(engine, updated_since="{{ x }}")
    explicit.updated_since = (t - timedelta(hours=3)).isoformat()  # as rendered
    assert len(explicit.execute(point)["batch_ids"]) == 2


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_an_api_failure_after_some_batches_converges_on_retry(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    from airflow_provider_cartesia.exceptions import CartesiaServerError
    from airflow_provider_cartesia.testing import Fault

    sim = cartesia_simulator
    first, second = quick(sim), quick(sim)
    op = operator(engine, batch_ids=[first, second, first])
    op.hook._sleep = lambda _: None
    attempts = op.hook.settings.max_retries + 1
    sim.inject("GET", f"/agents/calls/batches/{second}", Fault.server_error(503), times=attempts)
    with pytest.raises(CartesiaServerError):
        op.execute({})
    assert sim.pending_faults() == 0, "every attempt of the hook met the outage"
    assert engine.count(first) == 3 and engine.count(second) == 0
    sim.clock.advance(600)  # the API recovered, and the first batch's calls ended meanwhile
    summary = operator(engine, batch_ids=[first, second, first]).execute({})  # the task's retry
    assert summary["batch_ids"] == [first, second] and summary["rows_written"] == 6
    assert engine.count(first) == 3 and engine.count(second) == 3, "the first batch was replaced, not duplicated"
    assert engine.query(f"SELECT DISTINCT status FROM {engine.table}") == [("completed",)]


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_lineage_names_the_batches_and_the_table(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    batch_id = quick(cartesia_simulator)
    op = operator(engine, batch_id=batch_id)
    op.execute({})
    inputs, output = op.lineage_datasets()
    host = cartesia_simulator.url.split("://")[1]
    assert inputs == [(f"cartesia://{host}", f"agents/calls/batches/{batch_id}")]
    assert output[0].startswith("sqlite://") and output[1] == engine.table
    try:
        import airflow.providers.openlineage  # noqa: F401
    except ImportError:
        assert op.get_openlineage_facets_on_complete(None) is None
    else:
        facets = op.get_openlineage_facets_on_complete(None)
        assert [d.name for d in facets.outputs] == [engine.table]


# -- a real DAG run ---------------------------------------------------------------------------


@pytest.mark.dagtest
@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_dag_test_exports_from_xcom_and_on_schedule(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, airflow_db: None
) -> None:
    from airflow.sdk import DAG, task

    sim = cartesia_simulator
    w1 = sim.clock.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    w0 = w1 - timedelta(hours=1)
    by_id = quick(sim, name="by id", created_at=w0 - timedelta(days=2))
    in_window = quick(sim, name="in window", created_at=w0 + timedelta(minutes=1))
    quick(sim, name="too late", created_at=w1 + timedelta(minutes=1))
    sim.clock.advance_to(w1 + timedelta(minutes=10))

    from airflow.timetables.interval import CronDataIntervalTimetable

    hourly = CronDataIntervalTimetable("@hourly", timezone="UTC")
    with DAG("cartesia_export_test", schedule=hourly, start_date=w0 - timedelta(days=1), catchup=False) as dag:

        @task
        def created() -> str:
            return by_id

        one = CallBatchToWarehouseOperator(
            task_id="export_one",
            warehouse_conn_id=CONN_ID,
            table=engine.table,
            batch_id="{{ ti.xcom_pull(task_ids='created') }}",
            table_asset=True,
        )
        window = CallBatchToWarehouseOperator(task_id="export_window", warehouse_conn_id=CONN_ID, table=engine.table)
        created() >> one >> window

    run = run_dag_test(dag, logical_date=w1)
    assert str(run.state) in ("success", "DagRunState.SUCCESS")
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert {t: str(ti.state) for t, ti in tis.items()} == {
        "created": "success",
        "export_one": "success",
        "export_window": "success",
    }
    interval = (run.data_interval_start, run.data_interval_end)
    assert interval == (w0, w1), (interval, w0, w1)
    exported = {b for (b,) in engine.query(f"SELECT DISTINCT batch_id FROM {engine.table}")}
    assert exported == {by_id, in_window}
    xcom = tis["export_window"].xcom_pull(task_ids="export_window")
    assert xcom["batch_ids"] == [in_window] and xcom["rows_written"] == 3


def _task_failure_text(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err + caplog.text


@pytest.mark.dagtest
@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
@pytest.mark.parametrize("schedule", ["none", "cron_trigger"])
def test_a_manual_run_without_ids_says_there_is_no_window(
    schedule: str,
    engine: Engine,
    cartesia_conn_id: str,
    airflow_db: None,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A manual run's data interval is one instant, and Airflow 3.3 hands the previous success over as a
    lazy proxy around None: the documented message, not an AttributeError."""
    from airflow.sdk import DAG
    from airflow.timetables.trigger import CronTriggerTimetable  # also on Airflow 3.0 and 3.1

    timetable = CronTriggerTimetable("@daily", timezone="UTC") if schedule == "cron_trigger" else None
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with DAG(f"cartesia_export_manual_{schedule}", schedule=timetable, start_date=start, catchup=False) as dag:
        CallBatchToWarehouseOperator(task_id="export", warehouse_conn_id=CONN_ID, table=engine.table)
    run = run_dag_test(dag)
    assert str(run.state) in ("failed", "DagRunState.FAILED")
    text = _task_failure_text(capsys, caplog)
    if run.data_interval_start is not None:
        assert "This run's data interval is a single instant" in text
    else:  # Airflow 3.0.0 gives a run without a logical date no data interval at all (3.0.6: the instant run_after)
        assert not AIRFLOW_V_3_1_PLUS
        assert "this run has no data interval to default to" in text
    # Airflow 3.0's dag.test() logs its own AttributeError ('unmap') for any failed task, not ours.
    lines = [line for line in text.splitlines() if "'unmap'" not in line]
    assert not [line for line in lines if "AttributeError" in line or "no attribute" in line]


@pytest.mark.dagtest
@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_manual_runs_continue_from_the_last_successful_run(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, airflow_db: None
) -> None:
    """The second run reads prev_data_interval_end_success (a lazy proxy around a datetime) as its window's start."""
    from airflow.sdk import DAG

    sim = cartesia_simulator
    t1 = sim.clock.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    t2 = t1 + timedelta(hours=1)
    before = quick(sim, created_at=t1 - timedelta(minutes=30))
    between = quick(sim, created_at=t1 + timedelta(minutes=10))
    quick(sim, created_at=t2 + timedelta(minutes=10))
    sim.clock.advance_to(t2 + timedelta(minutes=30))
    start = t1 - timedelta(days=1)
    with DAG("cartesia_export_manual_chain", schedule=None, start_date=start, catchup=False) as dag:
        CallBatchToWarehouseOperator(
            task_id="export",
            warehouse_conn_id=CONN_ID,
            table=engine.table,
            updated_since="{{ dag_run.conf.get('since', '') }}",
        )
    first = run_dag_test(dag, logical_date=t1, run_conf={"since": (t1 - timedelta(hours=1)).isoformat()})
    assert str(first.state) in ("success", "DagRunState.SUCCESS")
    assert first.get_task_instance("export").xcom_pull(task_ids="export")["batch_ids"] == [before]
    second = run_dag_test(dag, logical_date=t2)
    assert str(second.state) in ("success", "DagRunState.SUCCESS")
    xcom = second.get_task_instance("export").xcom_pull(task_ids="export")
    assert xcom["window"] == {"updated_since": t1.isoformat(), "updated_before": t2.isoformat()}
    assert xcom["batch_ids"] == [between]


def _airflow_cli(*argv: str) -> None:
    """Run an ``airflow`` CLI command in this process, on the test metadata DB."""
    from airflow.cli import cli_parser

    args = cli_parser.get_parser().parse_args(list(argv))
    args.func(args)


@pytest.mark.dagtest
def test_a_sqlite_connection_made_with_the_cli_exports(
    tmp_path: Path, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, airflow_db: None
) -> None:
    """Without the sqlite provider, ``connections add --conn-type sqlite`` stores type 'generic'; it still works."""
    import sqlite3
    import uuid

    from airflow.models import Connection
    from airflow.utils.session import create_session

    from airflow_provider_cartesia.warehouse import _sqlite_provider_installed

    conn_id = f"cli_sqlite_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "cli.db"
    _airflow_cli("connections", "add", conn_id, "--conn-type", "sqlite", "--conn-host", str(path))
    try:
        with create_session() as session:
            stored = session.query(Connection).filter(Connection.conn_id == conn_id).one()
            assert stored.conn_type == ("sqlite" if _sqlite_provider_installed() else "generic")
        batch_id = quick(cartesia_simulator)
        from airflow.sdk import DAG

        start = datetime(2026, 1, 1, tzinfo=timezone.utc)
        with DAG(f"cartesia_export_{conn_id}", schedule=None, start_date=start, catchup=False) as dag:
            CallBatchToWarehouseOperator(task_id="export", warehouse_conn_id=conn_id, batch_id=batch_id, table="t")
        run = run_dag_test(dag)
        assert str(run.state) in ("success", "DagRunState.SUCCESS")
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT COUNT(*) FROM t WHERE batch_id = ?", (batch_id,)).fetchone()[0] == 3
    finally:
        _airflow_cli("connections", "delete", conn_id)


@pytest.mark.parametrize(
    ("conn", "hint"),
    [
        # What the CLI stores for --conn-type snowflake (or postgres, ...) when that provider is missing.
        ({"conn_type": "generic", "host": "db.example.com", "port": 5432}, "install the database's provider"),
        ({"conn_type": "generic", "host": "relative/path.db"}, "absolute path"),
        ({"conn_type": "http", "host": "example.com"}, "such as postgres, mysql or sqlite"),
        ({"conn_type": "cartesia", "password": "sk_car_x"}, "such as postgres, mysql or sqlite"),
    ],
)
def test_a_connection_without_a_sql_hook_says_what_to_do(
    conn: dict[str, Any], hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_cartesia.warehouse import get_warehouse_hook

    monkeypatch.setenv("AIRFLOW_CONN_NOT_A_DB", json.dumps(conn))
    with pytest.raises(CartesiaWarehouseSchemaError, match="has no SQL \\(DB-API\\) hook") as caught:
        get_warehouse_hook("not_a_db")
    assert hint in str(caught.value)
    assert "sk_car_x" not in str(caught.value)


# -- transient database errors leave the task to its retries ------------------------------------

_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN " + sys.argv[2])
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@pytest.mark.parametrize("lock", ["EXCLUSIVE", "IMMEDIATE"])
def test_a_sqlite_file_locked_by_another_process_is_transient(
    lock: str,
    tmp_path: Path,
    cartesia_simulator: CartesiaSimulator,
    cartesia_conn_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process holds the file's lock (EXCLUSIVE: nobody reads; IMMEDIATE: nobody writes)."""
    from airflow_provider_cartesia.compat import AirflowFailException

    path = tmp_path / "locked.db"
    conn = {"conn_type": "sqlite", "host": str(path), "extra": {"timeout": 0}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    batch_id = quick(cartesia_simulator)
    op = CallBatchToWarehouseOperator(task_id="export", warehouse_conn_id=CONN_ID, table="t", batch_id=batch_id)
    op.execute({})
    locker = subprocess.Popen(
        [sys.executable, "-c", _LOCKER, str(path), lock], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        with pytest.raises(CartesiaWarehouseError) as caught:
            op.execute({})
        assert not isinstance(caught.value, (CartesiaWarehouseSchemaError, AirflowFailException))
        assert caught.value.code is not None and caught.value.code.startswith("SQLITE_BUSY")
        assert "retries apply" in str(caught.value)
    finally:
        locker.communicate("\n", timeout=60)
    assert op.execute({})["rows_written"] == 3, "the retry succeeds once the lock is gone"


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_a_lock_timeout_while_reading_the_table_is_transient(
    engine: Engine, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another session holds an ACCESS EXCLUSIVE lock (a migration): the read of the table's shape times out."""
    from airflow_provider_cartesia.compat import AirflowFailException

    conn = {**json.loads(engine.conn_json), "extra": {"options": "-c lock_timeout=50"}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    batch_id = quick(cartesia_simulator)
    operator(engine, batch_id=batch_id).execute({})
    holder = engine.connect()
    try:
        holder.execute(f"LOCK TABLE {engine.table} IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(CartesiaWarehouseError) as caught:
            operator(engine, batch_id=batch_id).execute({})
        assert not isinstance(caught.value, (CartesiaWarehouseSchemaError, AirflowFailException))
        assert caught.value.code == "55P03" and "Could not read table" in str(caught.value)
        assert "retries apply" in str(caught.value)
    finally:
        holder.rollback()
        holder.close()
    assert operator(engine, batch_id=batch_id).execute({})["rows_written"] == 3


def test_a_bad_sqlite_timeout_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_cartesia.rows import RECIPIENT_COLUMNS
    from airflow_provider_cartesia.warehouse import WarehouseWriter, _sqlite_provider_installed, get_warehouse_hook

    if _sqlite_provider_installed():
        pytest.skip("the sqlite provider's own hook reads its extras its way")
    conn = {"conn_type": "sqlite", "host": str(tmp_path / "x.db"), "extra": {"timeout": "soon"}}
    monkeypatch.setenv("AIRFLOW_CONN_BADTIMEOUT", json.dumps(conn))
    with pytest.raises(CartesiaWarehouseSchemaError, match="extra 'timeout'"):
        WarehouseWriter(get_warehouse_hook("badtimeout"), "t", RECIPIENT_COLUMNS).connection  # noqa: B018
