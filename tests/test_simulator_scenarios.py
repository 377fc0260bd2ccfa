"""The CLI's named scenarios do what ``--help`` says, read through the hook with the clock driven."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest

from airflow_provider_cartesia.testing import CartesiaSimulator
from airflow_provider_cartesia.testing.scenarios import RATE_LIMITED_READS, SCENARIOS
from airflow_provider_cartesia.waiting import WaitCriteria

DEFAULT_POKE_INTERVAL = 60.0  # BaseSensorOperator's default


def test_slow_outlasts_many_default_pokes_so_a_deferrable_sensor_defers(cartesia_simulator: CartesiaSimulator, hook):
    import inspect

    from airflow.sdk.bases.sensor import BaseSensorOperator

    assert inspect.signature(BaseSensorOperator.__init__).parameters["poke_interval"].default == DEFAULT_POKE_INTERVAL
    batch_id = SCENARIOS["slow"].seed(cartesia_simulator)
    first_poke = hook.get_call_batch(batch_id)
    assert WaitCriteria().classify(first_poke) == "waiting", "the sensor's first poke must not end the wait"
    settles = cartesia_simulator.batch_times(batch_id).all_finished_at
    assert settles is not None
    assert settles - cartesia_simulator.clock.now() > timedelta(seconds=5 * DEFAULT_POKE_INTERVAL)
    cartesia_simulator.clock.advance(5 * DEFAULT_POKE_INTERVAL)
    assert WaitCriteria().classify(hook.get_call_batch(batch_id)) == "waiting"
    cartesia_simulator.clock.advance_to(settles)
    assert WaitCriteria().classify(hook.get_call_batch(batch_id)) == "success"


def test_fails_ends_failed_and_fails_the_wait(cartesia_simulator: CartesiaSimulator, hook):
    batch_id = SCENARIOS["fails"].seed(cartesia_simulator)
    cartesia_simulator.clock.advance(20)
    batch = hook.get_call_batch(batch_id)
    assert (batch.status, WaitCriteria().classify(batch)) == ("failed", "failure")
    assert all(r.error_message for r in batch.recipients or ())


def test_cancelled_is_cancelled_mid_way_with_calls_still_finishing(cartesia_simulator: CartesiaSimulator, hook):
    batch_id = SCENARIOS["cancelled"].seed(cartesia_simulator)
    batch = hook.get_call_batch(batch_id)
    assert batch.status == "cancelled"
    assert batch.recipient_status_counts()["cancelled"] == 80
    assert batch.total_calls_dispatched == 120 and batch.total_calls_finished < 120
    assert WaitCriteria().classify(batch) == "waiting", "calls in flight keep a 'finished' wait going"
    cartesia_simulator.clock.advance(180)
    assert WaitCriteria().classify(hook.get_call_batch(batch_id)) == "failure"


def test_rate_limited_answers_429_then_recovers(cartesia_simulator: CartesiaSimulator, hook, sleeps):
    batch_id = SCENARIOS["rate-limited"].seed(cartesia_simulator)
    path = f"/agents/calls/batches/{batch_id}"
    from airflow_provider_cartesia.exceptions import CartesiaRateLimitError

    with pytest.raises(CartesiaRateLimitError):
        hook.get_call_batch(batch_id)  # 1 + max_retries reads, all 429
    assert cartesia_simulator.count("GET", path) == 1 + hook.settings.max_retries
    assert cartesia_simulator.pending_faults() == RATE_LIMITED_READS - cartesia_simulator.count("GET", path)
    while cartesia_simulator.pending_faults():
        with contextlib.suppress(CartesiaRateLimitError):
            hook.get_call_batch(batch_id)
    assert hook.get_call_batch(batch_id).total_calls_scheduled == 20
    assert sleeps.waits and set(sleeps.waits) == {2.0}, "Retry-After: 2 is honoured"


def test_large_has_5000_recipients(cartesia_simulator: CartesiaSimulator, hook):
    batch = hook.get_call_batch(SCENARIOS["large"].seed(cartesia_simulator))
    assert batch.total_calls_scheduled == len(batch.recipients or ()) == 5000
