"""``python -m airflow_provider_cartesia batches list|get|watch`` against the simulator.

Output is read from rich's recording Console (plain text, fixed width), and ``watch`` moves the
simulator's clock from its injected sleep: no real waiting.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console

from airflow_provider_cartesia.terminal import main, rate_and_eta
from airflow_provider_cartesia.testing import CartesiaSimulator, Fault
from airflow_provider_cartesia.testing.scenarios import SCENARIOS
from airflow_provider_cartesia.waiting import WaitCriteria

REPO_ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str, sleep=None) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    console = Console(record=True, width=140, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    kwargs = {"sleep": sleep} if sleep is not None else {}
    code = main(list(argv), console=console, **kwargs)
    console.file.close()
    return code, console.export_text()


def test_list_shows_newest_first_and_filters_by_agent(cartesia_connection: str, cartesia_simulator: CartesiaSimulator):
    old = cartesia_simulator.seed_batch(name="Old one", agent_id="agent_a", recipients=3)
    cartesia_simulator.clock.advance(60)
    new = cartesia_simulator.seed_batch(name="New one", agent_id="agent_b", recipients=4)
    cartesia_simulator.clock.advance(3600)
    code, text = run("batches", "list")
    assert code == 0
    assert text.index(new) < text.index(old)
    assert "4/4/4" in text and "New one" in text
    code, text = run("batches", "list", "--agent", "agent_a")
    assert code == 0 and old in text and new not in text
    code, text = run("batches", "list", "--agent", "agent_nobody")
    assert code == 0 and "No call batches for agent agent_nobody." in text


def test_list_limit_stops_paging(cartesia_connection: str, cartesia_simulator: CartesiaSimulator):
    ids = [cartesia_simulator.seed_batch(recipients=1) for _ in range(5)]
    code, text = run("batches", "list", "--limit", "2")
    assert code == 0
    assert sum(batch_id in text for batch_id in ids) == 2
    assert cartesia_simulator.count("GET", "/agents/calls/batches") == 1


def test_get_shows_counters_and_outcomes_but_never_numbers_or_metadata(
    cartesia_connection: str, cartesia_simulator: CartesiaSimulator
):
    recipients = [
        {"to_number": "+14155550100", "metadata": {"secret": "meta_value_1"}, "outcome": "completed"},
        {"to_number": "+14155550101", "metadata": {"secret": "meta_value_2"}, "outcome": "no_answer"},
        {"to_number": "+14155550102", "metadata": None, "outcome": "pre_dial_failure"},
    ]
    batch_id = cartesia_simulator.seed_batch(name="Renewals", recipients=recipients)
    cartesia_simulator.clock.advance(3600)
    for argv in (("batches", "get", batch_id), ("batches", "get", batch_id, "--recipients")):
        code, text = run(*argv)
        assert code == 0
        assert "status: completed" in text and "settled, success" in text
        assert "3 finished / 3 dispatched / 3 scheduled" in text
        assert "dial_no_answer" in text
        assert "5550" not in text, "no phone number unless --show-numbers"
        assert "meta_value" not in text
    assert "acbr_" in text, "--recipients lists every recipient"
    code, text = run("batches", "get", batch_id, "--show-numbers")
    assert code == 0
    assert all(r["to_number"] in text for r in recipients)
    assert "meta_value" not in text


def test_get_of_an_unknown_batch_and_an_unknown_connection_say_what_to_do(
    cartesia_connection: str, monkeypatch: pytest.MonkeyPatch
):
    code, text = run("batches", "get", "acb_nope")
    assert code == 2 and "HTTP 404" in text
    code, text = run("batches", "get", "acb_nope", "--conn-id", "cartesia_elsewhere")
    assert code == 2
    assert "no connection 'cartesia_elsewhere'" in text and "AIRFLOW_CONN_CARTESIA_ELSEWHERE" in text


class ClockSleep:
    """The watch's sleep: moves the simulator's clock instead of waiting."""

    def __init__(self, sim: CartesiaSimulator) -> None:
        self.sim = sim
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.sim.clock.advance(seconds)


def test_watch_follows_the_batch_until_settled_by_the_sensors_rule(
    cartesia_connection: str, cartesia_simulator: CartesiaSimulator
):
    batch_id = SCENARIOS["slow"].seed(cartesia_simulator)
    sleep = ClockSleep(cartesia_simulator)
    code, text = run("batches", "watch", batch_id, "--interval", "30", sleep=sleep)
    assert code == 0
    assert set(sleep.waits) == {30.0} and len(sleep.waits) > 10
    # the wait ended on the first poll the sensor's classifier calls a success, not on `completed`
    settled_at = cartesia_simulator.batch_times(batch_id).all_finished_at
    assert settled_at is not None
    assert cartesia_simulator.clock.now() - settled_at < timedelta(seconds=30)
    assert WaitCriteria().classify(cartesia_simulator_batch(cartesia_simulator, batch_id)) == "success"
    assert "status: pending -> in_progress" in text and "status: in_progress -> completed" in text
    assert "30/30 finished, 30 dispatched" in text and "calls/min" in text
    assert f"Call batch {batch_id} completed: 30 of 30 calls finished" in text


def cartesia_simulator_batch(sim: CartesiaSimulator, batch_id: str):  # type: ignore[no-untyped-def]
    from airflow_provider_cartesia.models import CallBatch

    return CallBatch.model_validate(sim.batch(batch_id))


def test_watch_exits_1_on_a_failed_or_cancelled_batch(cartesia_connection: str, cartesia_simulator: CartesiaSimulator):
    for scenario in ("fails", "cancelled"):
        batch_id = SCENARIOS[scenario].seed(cartesia_simulator)
        code, text = run("batches", "watch", batch_id, "--interval", "10", sleep=ClockSleep(cartesia_simulator))
        assert code == 1, text
        assert "one of failure_statuses" in text


def test_watch_rides_out_a_429_storm_like_the_sensor(cartesia_connection: str, cartesia_simulator: CartesiaSimulator):
    batch_id = SCENARIOS["rate-limited"].seed(cartesia_simulator)
    sleep = ClockSleep(cartesia_simulator)
    code, text = run("batches", "watch", batch_id, "--interval", "20", sleep=sleep)
    assert code == 0, text
    assert "warning: Polling call batch" in text
    assert sleep.waits.count(2.0) >= 8, "the hook's retries honoured Retry-After on the injected sleep"


def test_watch_gives_up_after_the_sensors_failure_budget(
    cartesia_connection: str, cartesia_simulator: CartesiaSimulator
):
    batch_id = cartesia_simulator.seed_batch(recipients=2)
    cartesia_simulator.inject("GET", "/agents/calls/batches/*", Fault.server_error(503), times=1000)
    code, text = run("batches", "watch", batch_id, "--interval", "5", sleep=ClockSleep(cartesia_simulator))
    assert code == 2
    assert "max_consecutive_failures=5" in text


def test_rate_and_eta_use_the_apis_own_clock(cartesia_simulator: CartesiaSimulator):
    from airflow_provider_cartesia.models import CallBatch

    batch_id = cartesia_simulator.seed_batch(recipients=10, dispatch_interval=6.0, call_seconds=(1.0, 1.0))
    assert rate_and_eta(CallBatch.model_validate(cartesia_simulator.batch(batch_id))) == (None, None)
    cartesia_simulator.clock.advance(31)
    batch = CallBatch.model_validate(cartesia_simulator.batch(batch_id))
    assert batch.admitted_at is not None and batch.last_updated_at is not None
    minutes = (batch.last_updated_at - batch.admitted_at).total_seconds() / 60
    assert 0 < batch.total_calls_finished < 10
    rate, eta = rate_and_eta(batch)
    assert rate == pytest.approx(batch.total_calls_finished / minutes)
    assert eta == pytest.approx((10 - batch.total_calls_finished) / rate * 60)


def test_the_entry_point_runs_in_a_subprocess(cartesia_simulator: CartesiaSimulator):
    batch_id = cartesia_simulator.seed_batch(name="Via env", recipients=2)
    env = {**os.environ, "AIRFLOW_CONN_CARTESIA_DEFAULT": cartesia_simulator.connection_json(), "COLUMNS": "150"}
    out = subprocess.run(
        [sys.executable, "-m", "airflow_provider_cartesia", "batches", "get", batch_id],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert batch_id in out.stdout and "2 scheduled" in out.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("list", "--limit", "0"), "--limit must be at least 1"),
        (("watch", "acb_1", "--interval", "0"), "--interval must be more than 0 seconds"),
    ],
)
def test_bad_arguments_exit_2_before_any_request(
    argv: tuple[str, ...], expected: str, cartesia_connection: str, cartesia_simulator: CartesiaSimulator
):
    code, text = run("batches", *argv)
    assert code == 2 and f"error: {expected}" in text
    assert cartesia_simulator.requests == []
