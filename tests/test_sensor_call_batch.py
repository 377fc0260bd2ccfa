"""CallBatchSensor against the simulator, end to end with ``dag.test()`` in poke, reschedule and deferrable modes.

One DAG per mode runs every scenario as its own task (chained, ``trigger_rule="all_done"``), so the
three modes are checked against the same seeded batches and the same request-log assertions. The
simulator's clock ticks 30 simulated seconds per request: batches progress as the sensor polls, and
nothing sleeps but the tiny poke interval.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow.sdk import DAG, chain

from airflow_provider_cartesia.compat import AirflowFailException, AirflowSkipException, TaskDeferred
from airflow_provider_cartesia.models import CallBatch
from airflow_provider_cartesia.sensors.call_batch import CallBatchSensor
from airflow_provider_cartesia.testing import CartesiaSimulator, Fault
from airflow_provider_cartesia.testing.dag_test import run_dag_test
from airflow_provider_cartesia.triggers.call_batch import CallBatchTrigger
from airflow_provider_cartesia.waiting import CallBatchWaitError
from tests.helpers import cartesia_connection_json

TICK = 30.0
MODES: dict[str, dict[str, Any]] = {
    "poke": {"mode": "poke"},
    "reschedule": {"mode": "reschedule"},
    "deferrable": {"deferrable": True},
}
LONG_CALLS = (100_000.0, 100_001.0)
SHORT_CALLS = (1.0, 2.0)


@pytest.fixture
def noretry_conn(cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A connection whose hook never retries: every injected fault is one failed poll of the sensor."""
    monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_NORETRY", cartesia_connection_json(cartesia_simulator, max_retries=0))
    return "cartesia_noretry"


def _seed(sim: CartesiaSimulator, hook: Any) -> dict[str, str]:
    """One batch per scenario, at simulated time 0 (1.5 s for the cancel); the clock does not tick yet."""
    ids = {
        "settles": sim.seed_batch(recipients=3, call_seconds=(40.0, 60.0), outcomes={"completed": 1.0}),
        "dispatched": sim.seed_batch(recipients=2, call_seconds=LONG_CALLS, outcomes={"completed": 1.0}),
        "failed": sim.seed_batch(recipients=2, outcomes={"pre_dial_failure": 1.0}),
        "failed_soft": sim.seed_batch(recipients=2, outcomes={"pre_dial_failure": 1.0}),
        "cancelled": sim.seed_batch(recipients=3, call_seconds=SHORT_CALLS, outcomes={"completed": 1.0}),
        "cancelled_soft": sim.seed_batch(recipients=3, call_seconds=SHORT_CALLS, outcomes={"completed": 1.0}),
        "missing": "acb_does_not_exist",
        "timeout": sim.seed_batch(recipients=1, call_seconds=LONG_CALLS, outcomes={"completed": 1.0}),
        "bursts": sim.seed_batch(recipients=1, call_seconds=SHORT_CALLS, outcomes={"completed": 1.0}),
        "exhausted": sim.seed_batch(recipients=1, call_seconds=SHORT_CALLS, outcomes={"completed": 1.0}),
    }
    sim.clock.advance(1.5)  # the first recipient of each batch is dispatched at 1 s
    for name in ("cancelled", "cancelled_soft"):
        hook.cancel_call_batch(ids[name])
    return ids


def _path(batch_id: str) -> str:
    return f"/agents/calls/batches/{batch_id}"


def _build_dag(mode: str, ids: dict[str, str], noretry: str) -> DAG:
    common: dict[str, Any] = {"poke_interval": 0.05, "timeout": 60, "trigger_rule": "all_done", **MODES[mode]}
    with DAG(f"cartesia_sensor_{mode}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        chain(
            CallBatchSensor(task_id="settles", batch_id=ids["settles"], **common),
            CallBatchSensor(task_id="dispatched", batch_id=ids["dispatched"], wait_for="dispatched", **common),
            CallBatchSensor(task_id="failed", batch_id=ids["failed"], **common),
            CallBatchSensor(task_id="failed_soft", batch_id=ids["failed_soft"], soft_fail=True, **common),
            CallBatchSensor(task_id="cancelled", batch_id=ids["cancelled"], **common),
            CallBatchSensor(task_id="cancelled_soft", batch_id=ids["cancelled_soft"], soft_fail=True, **common),
            CallBatchSensor(task_id="missing", batch_id=ids["missing"], **common),
            CallBatchSensor(task_id="timeout", batch_id=ids["timeout"], **{**common, "timeout": 0.5}),
            CallBatchSensor(task_id="bursts", batch_id=ids["bursts"], cartesia_conn_id=noretry, **common),
            CallBatchSensor(
                task_id="exhausted",
                batch_id=ids["exhausted"],
                cartesia_conn_id=noretry,
                max_consecutive_failures=1,
                **common,
            ),
        )
    return dag


EXPECTED_STATES = {
    "settles": "success",
    "dispatched": "success",
    "failed": "failed",
    "failed_soft": "skipped",
    "cancelled": "failed",
    "cancelled_soft": "skipped",
    "missing": "failed",
    "timeout": "failed",
    "bursts": "success",
    "exhausted": "failed",
}


@pytest.mark.dagtest
@pytest.mark.parametrize("mode", list(MODES))
def test_sensor_in_every_mode(
    mode: str,
    airflow_db: None,
    cartesia_simulator: CartesiaSimulator,
    cartesia_conn_id: str,
    noretry_conn: str,
    hook: Any,
) -> None:
    sim = cartesia_simulator
    ids = _seed(sim, hook)
    # A burst of 429s and 5xx (5 failed polls: exactly the default budget) does not fail the wait;
    # one more failure than max_consecutive_failures=1 does.
    sim.inject("GET", _path(ids["bursts"]), Fault.rate_limited(retry_after="0"), times=3)
    sim.inject("GET", _path(ids["bursts"]), Fault.server_error(503), times=2)
    sim.inject("GET", _path(ids["exhausted"]), Fault.server_error(500), times=2)
    sim.clock.tick_per_request = TICK

    dr = run_dag_test(_build_dag(mode, ids, noretry_conn))

    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert {task_id: str(ti.state) for task_id, ti in tis.items()} == EXPECTED_STATES

    # `completed` while calls still ran was not the end under wait_for="finished": the sensor polled
    # during that window, and stopped at the first poll after the last call ended.
    times = sim.batch_times(ids["settles"])
    assert times.all_dispatched_at is not None and times.all_finished_at is not None
    polls = [r.at for r in sim.requests if r.path == _path(ids["settles"])]
    assert any(times.all_dispatched_at <= at < times.all_finished_at for at in polls), polls
    assert len([at for at in polls if at >= times.all_finished_at]) == 1, polls

    # The XCom summary is the batch's final counts, the same in every mode (never a recipient).
    settled = CallBatch.model_validate(sim.batch(ids["settles"])).summary()
    assert tis["settles"].xcom_pull(task_ids="settles") == settled
    assert settled["total_calls_finished"] == settled["total_calls_dispatched"] == 3
    dispatched = tis["dispatched"].xcom_pull(task_ids="dispatched")
    assert dispatched["status"] == "completed"
    assert dispatched["total_calls_dispatched"] == 2
    assert dispatched["total_calls_finished"] == 0
    assert "recipients" not in dispatched
    assert tis["bursts"].xcom_pull(task_ids="bursts")["status"] == "completed"

    # 404 fails at once: one request, no retries, no further polls.
    assert sim.count("GET", _path(ids["missing"])) == 1
    # Five failed polls then one good one; and exactly max_consecutive_failures + 1 polls before giving up.
    assert sim.count("GET", _path(ids["bursts"])) == 6
    assert sim.count("GET", _path(ids["exhausted"])) == 2
    assert sim.pending_faults() == 0

    # The extra link is there in every mode (the worker stores it when the task ends or defers).
    link = tis["settles"].xcom_pull(task_ids="settles", key="_link_CallBatchLink")
    assert link == f"https://play.cartesia.ai/agents/calls/batches/{ids['settles']}"


def _fake_context(**ti_methods: Any) -> Any:
    """A context carrying only what CallBatchSensor.execute touches outside dag.test()."""

    class _TI:
        def __init__(self) -> None:
            self.xcom: dict[str, Any] = {}

        def xcom_push(self, key: str, value: Any) -> None:
            self.xcom[key] = value

    ti = _TI()
    for name, method in ti_methods.items():
        setattr(ti, name, method)
    return {"ti": ti}


def test_deferrable_pokes_once_then_defers_with_an_absolute_deadline(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    import time

    batch_id = cartesia_simulator.seed_batch(recipients=2, call_seconds=LONG_CALLS)
    sensor = CallBatchSensor(
        task_id="wait", batch_id=batch_id, deferrable=True, poke_interval=45, timeout=3600, max_consecutive_failures=3
    )
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(_fake_context())
    assert cartesia_simulator.count("GET", _path(batch_id)) == 1
    trigger = deferred.value.trigger
    assert isinstance(trigger, CallBatchTrigger)
    assert trigger.poll_interval == 45
    assert before + 3600 <= trigger.end_time <= time.time() + 3600  # type: ignore[operator]
    # The sensor just polled: the trigger's first poll is one interval later, not at once.
    assert trigger.first_poll_at is not None and trigger.first_poll_at >= before + 45
    assert deferred.value.method_name == "execute_complete"
    assert trigger.criteria == sensor.wait_criteria


@pytest.mark.parametrize("mode", list(MODES))
def test_scheduled_batch_is_not_polled_before_shortly_before_scheduled_at(
    mode: str, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Poke mode sleeps, reschedule mode is rescheduled, the trigger starts, min(poke_interval, 60 s) before.

    The sensor reads one frozen ``time.time()``, so the expected instant is exact on a busy machine.
    """
    import time
    import types

    from airflow_provider_cartesia.compat import AirflowRescheduleException
    from airflow_provider_cartesia.sensors import call_batch as sensor_module

    scheduled_at = datetime.now(timezone.utc) + timedelta(hours=2)
    batch_id = cartesia_simulator.seed_batch(recipients=2, scheduled_at=scheduled_at)
    sensor = CallBatchSensor(task_id="wait", batch_id=batch_id, poke_interval=300, timeout=86_400, **MODES[mode])
    frozen = time.time()
    monkeypatch.setattr(sensor_module, "time", types.SimpleNamespace(time=lambda: frozen, sleep=time.sleep))
    slept: list[float] = []
    sensor._sleep = slept.append
    if mode == "deferrable":
        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(_fake_context())
        next_poll = deferred.value.trigger.first_poll_at
    elif mode == "reschedule":
        with pytest.raises(AirflowRescheduleException) as rescheduled:
            sensor.execute(_fake_context(get_first_reschedule_date=lambda context: None))
        next_poll = rescheduled.value.reschedule_date.timestamp()
    else:
        assert not sensor.poke(_fake_context())
        next_poll = frozen + slept[0]
        assert len(slept) == 1, "one sleep, then one more look"
    assert cartesia_simulator.count("GET", _path(batch_id)) == (2 if mode == "poke" else 1)
    assert next_poll == pytest.approx(scheduled_at.timestamp() - 60, abs=1e-3)


def test_scheduled_wait_is_capped_at_the_timeout(cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str) -> None:
    import time

    scheduled_at = datetime.now(timezone.utc) + timedelta(hours=2)
    batch_id = cartesia_simulator.seed_batch(recipients=1, scheduled_at=scheduled_at)
    sensor = CallBatchSensor(task_id="wait", batch_id=batch_id, poke_interval=30, timeout=600)
    slept: list[float] = []
    sensor._sleep = slept.append
    sensor._started = time.time() - 100
    assert not sensor.poke(_fake_context())
    assert slept == [pytest.approx(500, abs=1)]


@pytest.mark.dagtest
def test_poke_mode_request_log_one_poll_per_interval_none_before_scheduled_at(
    airflow_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request log shows the cadence, on the simulator's clock: the sensor's sleeps advance it.

    Airflow's poke loop and the sensor read time (``time.sleep``/``monotonic``/``time``) from the
    simulator's clock, so the timestamps are exact however busy the machine is. An upstream task
    seeds the batch, scheduled 1.5 s ahead, and the sensor's templated ``batch_id`` pulls its id
    from XCom.
    """
    import types

    from airflow.sdk import task
    from airflow.sdk.bases import sensor as base_sensor

    from airflow_provider_cartesia.sensors import call_batch as sensor_module

    with CartesiaSimulator() as sim:
        monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_SIMCLOCK", cartesia_connection_json(sim))
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            sim.clock.advance(seconds)

        def sim_time() -> float:
            return sim.clock.now().timestamp()

        sim_clock_time = types.SimpleNamespace(sleep=sleep, monotonic=sim_time, time=sim_time)
        monkeypatch.setattr(base_sensor, "time", sim_clock_time)
        monkeypatch.setattr(sensor_module, "time", sim_clock_time)
        scheduled: dict[str, datetime] = {}

        @task
        def seed() -> str:
            scheduled["seeded"] = sim.clock.now()
            scheduled["at"] = scheduled["seeded"] + timedelta(seconds=1.5)
            return sim.seed_batch(
                recipients=1, scheduled_at=scheduled["at"], dispatch_interval=0.2, outcomes={"dial_failed": 1.0}
            )

        with DAG("cartesia_sensor_cadence", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
            seed() >> CallBatchSensor(
                task_id="wait",
                batch_id="{{ ti.xcom_pull(task_ids='seed') }}",
                cartesia_conn_id="cartesia_simclock",
                poke_interval=0.2,
            )
        dr = run_dag_test(dag)
        states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
        assert states == {"seed": "success", "wait": "success"}
        batch_id = sim.batch_ids()[0]
        polls = [r.at for r in sim.requests if r.path == _path(batch_id)]
    wake = scheduled["at"] - timedelta(seconds=0.2)  # min(poke_interval, 60 s) ahead of scheduled_at
    # The first poll at once, then one sleep to shortly before scheduled_at and nothing in between...
    assert polls[0] == scheduled["seeded"], polls
    assert slept[0] == pytest.approx(1.3), slept
    assert (polls[1] - wake).total_seconds() == pytest.approx(0, abs=1e-6), polls
    # ...then one poll per poke interval, until the call ended.
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(polls[1:])]
    assert gaps and all(gap == pytest.approx(0.2, abs=1e-6) for gap in gaps), gaps
    assert len(polls) == len(slept) + 1


def test_execute_complete_fails_closed_and_ends_like_a_poke(cartesia_conn_id: str) -> None:
    sensor = CallBatchSensor(task_id="wait", batch_id="acb_1", deferrable=True)
    summary = {"batch_id": "acb_1", "status": "completed", "total_calls_finished": 2}
    assert sensor.execute_complete({}, {"status": "success", "batch_id": "acb_1", "summary": summary}) == summary
    from airflow_provider_cartesia.compat import AirflowException, AirflowSensorTimeout

    for bad in (None, {}, {"status": "cancelled", "batch_id": "acb_1"}, {"status": "success", "batch_id": "acb_2"}):
        with pytest.raises(AirflowException):
            sensor.execute_complete({}, bad)  # type: ignore[arg-type]
    with pytest.raises(AirflowException, match="without a summary"):
        sensor.execute_complete({}, {"status": "success", "batch_id": "acb_1"})
    with pytest.raises(AirflowFailException, match="cancelled"):
        sensor.execute_complete({}, {"status": "failure", "batch_id": "acb_1", "message": "ended cancelled"})
    with pytest.raises(AirflowException, match="unknown event status 'failed'"):  # the old word fails closed
        sensor.execute_complete({}, {"status": "failed", "batch_id": "acb_1", "message": "ended cancelled"})
    with pytest.raises(AirflowFailException, match="404"):
        sensor.execute_complete({}, {"status": "error", "batch_id": "acb_1", "message": "HTTP 404"})
    with pytest.raises(CallBatchWaitError):
        sensor.execute_complete({}, {"status": "error", "batch_id": "acb_1", "retriable": True})
    with pytest.raises(AirflowSensorTimeout):
        sensor.execute_complete({}, {"status": "timeout", "batch_id": "acb_1"})


def test_deferrable_first_poke_failure_skips_with_soft_fail(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    batch_id = cartesia_simulator.seed_batch(recipients=1, outcomes={"pre_dial_failure": 1.0})
    cartesia_simulator.clock.advance(10)
    soft = CallBatchSensor(task_id="soft", batch_id=batch_id, deferrable=True, soft_fail=True)
    with pytest.raises(AirflowSkipException):
        soft.execute(_fake_context())
    hard = CallBatchSensor(task_id="hard", batch_id=batch_id, deferrable=True)
    with pytest.raises(AirflowFailException, match="status 'failed'"):
        hard.execute(_fake_context())
    # never_fail skips even a spent failure budget, as BaseSensorOperator.execute does in poke mode.
    never = CallBatchSensor(task_id="never", batch_id=batch_id, deferrable=True, never_fail=True)
    with pytest.raises(AirflowSkipException):
        never.execute(_fake_context())
    with pytest.raises(AirflowSkipException):
        never.execute_complete({}, {"status": "error", "batch_id": batch_id, "retriable": True})


def test_invalid_arguments_fail_at_parse_time() -> None:
    with pytest.raises(ValueError, match="wait_for"):
        CallBatchSensor(task_id="a", batch_id="acb_1", wait_for="ended")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both"):
        CallBatchSensor(task_id="b", batch_id="acb_1", failure_statuses=("completed",))
    with pytest.raises(ValueError, match="list of statuses"):
        CallBatchSensor(task_id="c", batch_id="acb_1", success_statuses="completed")
    with pytest.raises(ValueError, match="max_consecutive_failures"):
        CallBatchSensor(task_id="d", batch_id="acb_1", max_consecutive_failures=-1)


def test_api_key_and_phone_numbers_stay_out_of_logs_and_xcom(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    batch_id = cartesia_simulator.seed_batch(recipients=2, call_seconds=SHORT_CALLS)
    cartesia_simulator.clock.advance(3600)
    sensor = CallBatchSensor(task_id="wait", batch_id=batch_id)
    with caplog.at_level("DEBUG"):
        result = sensor.poke(_fake_context())
    assert result.is_done
    text = caplog.text + json.dumps(result.xcom_value)
    assert cartesia_simulator.api_key not in text
    assert "+1415" not in text and "cust_" not in text


@pytest.fixture(autouse=True)
def _no_leftover_tick(cartesia_simulator: CartesiaSimulator) -> Iterator[None]:
    yield
    cartesia_simulator.clock.tick_per_request = 0.0
