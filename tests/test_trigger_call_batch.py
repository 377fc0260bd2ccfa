"""CallBatchTrigger against the simulator over real HTTP, on the simulator's clock.

``drive()`` makes the trigger read the simulator's clock and turns its sleeps into clock advances,
so a wait of hours runs in milliseconds and the request log's timestamps are exact. The hook's own
retry waits are recorded (``sleeps``), never slept.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from airflow.triggers.base import TriggerEvent

from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
from airflow_provider_cartesia.testing import CartesiaSimulator, Fault
from airflow_provider_cartesia.triggers.call_batch import CallBatchTrigger

LONG_CALLS = (100_000.0, 100_001.0)
COMPLETED = {"completed": 1.0}


def drive(trigger: CallBatchTrigger, sim: CartesiaSimulator, sleeps: Any, stop_after_sleeps: int | None = None) -> None:
    """Run ``trigger`` on the simulator's clock; optionally stop it (as a triggerer restart would) mid-wait."""
    done: list[float] = []

    def now() -> float:
        return sim.clock.now().timestamp()

    async def sleep(seconds: float) -> None:
        if stop_after_sleeps is not None and len(done) >= stop_after_sleeps:
            raise asyncio.CancelledError
        done.append(seconds)
        sim.clock.advance(seconds)

    trigger._now = now  # type: ignore[method-assign]
    trigger._sleep = sleep  # type: ignore[method-assign]
    trigger.hook._asleep = sleeps.asleep


def run_trigger(trigger: CallBatchTrigger) -> list[TriggerEvent]:
    """Every event the trigger yields (it must yield exactly one and stop)."""

    async def collect(events: AsyncIterator[TriggerEvent]) -> list[TriggerEvent]:
        return [event async for event in events]

    return asyncio.run(collect(trigger.run()))


def only_event(trigger: CallBatchTrigger) -> dict[str, Any]:
    events = run_trigger(trigger)
    assert len(events) == 1, events
    return events[0].payload


def polls(sim: CartesiaSimulator, batch_id: str) -> list[datetime]:
    """When the batch was read: its GETs and the list reads of its agent (a list read and the GET that
    confirms it, at the same instant, are one poll)."""
    agent = sim.batch(batch_id)["agent_id"]
    reads = {
        r.at
        for r in sim.requests
        if r.path == f"/agents/calls/batches/{batch_id}"
        or (r.path == "/agents/calls/batches" and r.method == "GET" and r.query.get("agent_id") == agent)
    }
    return sorted(reads)


def gaps(times: list[datetime]) -> list[float]:
    return [round((b - a).total_seconds(), 3) for a, b in itertools.pairwise(times)]


def start(sim: CartesiaSimulator) -> float:
    return sim.clock.now().timestamp()


def test_serialize_holds_ids_and_settings_only_and_round_trips() -> None:
    trigger = CallBatchTrigger(
        batch_id="acb_1",
        cartesia_conn_id="cartesia_prod",
        poll_interval=45,
        end_time=1_900_000_000.5,
        criteria={
            "wait_for": "dispatched",
            "success_statuses": ["completed"],
            "failure_statuses": ("failed",),
            "max_consecutive_failures": 2,
        },
        first_poll_at=1_800_000_000.0,
        exponential_backoff=True,
        max_wait=600,
        consecutive_failures=1,
        agent_id="agent_1",
        batch_created_at="2026-06-01T12:00:00+00:00",
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_cartesia.triggers.call_batch.CallBatchTrigger"
    assert kwargs == {
        "batch_id": "acb_1",
        "cartesia_conn_id": "cartesia_prod",
        "poll_interval": 45.0,
        "end_time": 1_900_000_000.5,
        "first_poll_at": 1_800_000_000.0,
        "exponential_backoff": True,
        "max_wait": 600.0,
        "consecutive_failures": 1,
        "agent_id": "agent_1",
        "batch_created_at": "2026-06-01T12:00:00+00:00",
        "criteria": {
            "wait_for": "dispatched",
            "success_statuses": ["completed"],
            "failure_statuses": ["failed"],
            "max_consecutive_failures": 2,
        },
    }
    json.dumps(kwargs)  # stored in the metadata DB as is
    from tests.helpers import import_string

    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_serialize_never_holds_the_api_key(cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str) -> None:
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    trigger = CallBatchTrigger(batch_id=batch_id, poll_interval=1, end_time=time.time() + 60)
    batch = asyncio.run(trigger.hook.aget_call_batch(batch_id))  # the hook resolved the key...
    assert batch.id == batch_id
    assert cartesia_simulator.api_key not in json.dumps(trigger.serialize())  # ...the trigger never stores it


def test_completed_while_calls_run_is_not_finished_and_polls_are_exactly_one_interval_apart(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=3, call_seconds=(120.0, 300.0), outcomes=COMPLETED)
    trigger = CallBatchTrigger(batch_id=batch_id, poll_interval=30, end_time=start(sim) + 3600)
    drive(trigger, sim, sleeps)

    event = only_event(trigger)

    assert event["status"] == "success"
    assert event["summary"]["total_calls_finished"] == event["summary"]["total_calls_dispatched"] == 3
    times = sim.batch_times(batch_id)
    seen = polls(sim, batch_id)
    assert any(times.all_dispatched_at <= at < times.all_finished_at for at in seen)  # saw "completed", kept going
    assert len([at for at in seen if at >= times.all_finished_at]) == 1  # stopped at the first settled poll
    assert set(gaps(seen)) == {30.0}
    assert sleeps.waits == []  # no request needed a retry


def test_wait_for_dispatched_ends_at_the_terminal_status(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=2, call_seconds=LONG_CALLS, outcomes=COMPLETED)
    trigger = CallBatchTrigger(
        batch_id=batch_id, poll_interval=1, end_time=start(sim) + 60, criteria={"wait_for": "dispatched"}
    )
    drive(trigger, sim, sleeps)

    event = only_event(trigger)

    assert event["status"] == "success"
    assert event["summary"]["status"] == "completed"
    assert event["summary"]["total_calls_finished"] == 0
    assert polls(sim, batch_id)[-1] >= sim.batch_times(batch_id).all_dispatched_at


def test_failed_and_cancelled_batches_end_in_a_failed_event_with_counts(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any, hook: CartesiaHook
) -> None:
    sim = cartesia_simulator
    failed = sim.seed_batch(recipients=2, outcomes={"pre_dial_failure": 1.0})
    cancelled = sim.seed_batch(recipients=4, call_seconds=(5.0, 5.0), outcomes=COMPLETED)
    sim.clock.advance(1.5)
    hook.cancel_call_batch(cancelled)
    events = {}
    for batch_id in (failed, cancelled):
        trigger = CallBatchTrigger(batch_id=batch_id, poll_interval=10, end_time=start(sim) + 600)
        drive(trigger, sim, sleeps)
        events[batch_id] = only_event(trigger)

    assert events[failed]["status"] == "failure"
    assert "status 'failed'" in events[failed]["message"]
    assert "2 of 2 calls finished" in events[failed]["message"]
    assert events[cancelled]["status"] == "failure"
    assert events[cancelled]["summary"]["status"] == "cancelled"
    # The one call dispatched before the cancel was waited for (wait_for="finished").
    assert (
        events[cancelled]["summary"]["total_calls_finished"] == events[cancelled]["summary"]["total_calls_dispatched"]
    )
    assert "recipients: 3 cancelled, 1 completed" in events[cancelled]["message"]


@pytest.mark.parametrize(("interval", "lead"), [(30.0, 30.0), (300.0, 60.0)])
def test_scheduled_batch_is_first_polled_again_shortly_before_scheduled_at(
    interval: float, lead: float, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    scheduled_at = sim.clock.now() + timedelta(hours=5)
    batch_id = sim.seed_batch(recipients=1, scheduled_at=scheduled_at, call_seconds=(10.0, 10.0))
    trigger = CallBatchTrigger(batch_id=batch_id, poll_interval=interval, end_time=start(sim) + 86_400)
    drive(trigger, sim, sleeps)

    assert only_event(trigger)["status"] == "success"

    seen = polls(sim, batch_id)
    assert seen[0] == sim.clock.start
    assert seen[1] == scheduled_at - timedelta(seconds=lead)  # nothing in five hours but this
    assert set(gaps(seen[1:])) == {interval}


def test_deadline_polls_once_more_then_times_out(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=1, call_seconds=LONG_CALLS, outcomes=COMPLETED)
    trigger = CallBatchTrigger(batch_id=batch_id, poll_interval=30, end_time=start(sim) + 100)
    drive(trigger, sim, sleeps)

    event = only_event(trigger)

    assert event["status"] == "timeout"
    assert event["summary"]["status"] == "completed"
    assert "did not settle before the wait's deadline" in event["message"]
    assert gaps(polls(sim, batch_id)) == [30.0, 30.0, 30.0, 10.0]


def test_a_burst_of_429s_and_5xx_does_not_fail_the_wait(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=1, call_seconds=(5.0, 5.0), outcomes=COMPLETED)
    path = f"/agents/calls/batches/{batch_id}"
    # 8 x 429 then 8 x 5xx: with 4 retries per poll, the first 3 polls fail after all their retries,
    # the 4th succeeds on its second try; 3 failed polls in a row are within the default budget of 5.
    sim.inject("GET", path, Fault.rate_limited(retry_after="2"), times=8)
    sim.inject("GET", path, Fault.server_error(503), times=8)
    trigger = CallBatchTrigger(batch_id=batch_id, poll_interval=20, end_time=start(sim) + 3600)
    drive(trigger, sim, sleeps)

    event = only_event(trigger)

    assert event["status"] == "success"
    assert sim.pending_faults() == 0
    assert sleeps.waits[:4] == [2.0, 2.0, 2.0, 2.0]  # Retry-After honoured by the hook's async path
    assert len(set(polls(sim, batch_id))) == 4  # polls at 0, 20, 40 s failed; the one at 60 s settled
    assert sim.count("GET", path) == 5 + 5 + 5 + 2


def test_spent_failure_budget_is_a_retriable_error(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=1)
    sim.inject("GET", f"/agents/calls/batches/{batch_id}", Fault.server_error(500), times=100)
    trigger = CallBatchTrigger(
        batch_id=batch_id, poll_interval=10, end_time=start(sim) + 3600, criteria={"max_consecutive_failures": 2}
    )
    drive(trigger, sim, sleeps)

    event = only_event(trigger)

    assert event["status"] == "error"
    assert event["retriable"] is True
    assert "3 polls in a row failed (max_consecutive_failures=2)" in event["message"]
    assert len(set(polls(sim, batch_id))) == 3  # three polls, each with the hook's 1 + 4 tries
    assert sim.count("GET", f"/agents/calls/batches/{batch_id}") == 15


def test_failures_before_deferring_count_against_the_budget(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=1)
    sim.inject("GET", f"/agents/calls/batches/{batch_id}", Fault.server_error(500), times=5)
    trigger = CallBatchTrigger(
        batch_id=batch_id, poll_interval=10, criteria={"max_consecutive_failures": 2}, consecutive_failures=2
    )
    drive(trigger, sim, sleeps)

    assert only_event(trigger)["status"] == "error"
    assert len(set(polls(sim, batch_id))) == 1


def test_404_and_401_fail_at_once_saying_what_to_check(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = cartesia_simulator
    missing = CallBatchTrigger(batch_id="acb_nope", poll_interval=10, end_time=start(sim) + 600)
    drive(missing, sim, sleeps)
    event = only_event(missing)
    assert (event["status"], event["retriable"]) == ("error", False)
    assert "HTTP 404" in event["message"] and "Check the id" in event["message"]
    assert sim.count("GET", "/agents/calls/batches/acb_nope") == 1

    batch_id = sim.seed_batch(recipients=1)
    wrong_key = json.dumps({"conn_type": "cartesia", "host": sim.url, "password": "sk_car_wrong"})
    monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_WRONG", wrong_key)
    refused = CallBatchTrigger(batch_id=batch_id, cartesia_conn_id="cartesia_wrong", poll_interval=10)
    drive(refused, sim, sleeps)
    event = only_event(refused)
    assert (event["status"], event["retriable"]) == ("error", False)
    assert "HTTP 401" in event["message"] and "cartesia_wrong" in event["message"]
    assert "sk_car_wrong" not in event["message"]
    assert sleeps.waits == []


def test_rebuilt_from_serialize_after_a_restart_it_carries_on_to_the_same_deadline(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=1, call_seconds=LONG_CALLS, outcomes=COMPLETED)
    deadline = start(sim) + 200
    first = CallBatchTrigger(batch_id=batch_id, poll_interval=30, end_time=deadline)
    drive(first, sim, sleeps, stop_after_sleeps=2)
    with pytest.raises(asyncio.CancelledError):
        run_trigger(first)  # the triggerer stopped after the third poll (t = 60 s)
    sim.clock.advance(45)  # it came back 45 s later

    _, kwargs = first.serialize()
    second = CallBatchTrigger(**kwargs)
    drive(second, sim, sleeps)
    event = only_event(second)

    assert event["status"] == "timeout"
    seen = polls(sim, batch_id)
    # 0, 30, 60 | restart at 105: poll at once, then every 30 s up to the original deadline (200).
    assert [round((at - seen[0]).total_seconds()) for at in seen] == [0, 30, 60, 105, 135, 165, 195, 200]


def test_exponential_backoff_doubles_the_interval_up_to_max_wait(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=1, call_seconds=LONG_CALLS, outcomes=COMPLETED)
    trigger = CallBatchTrigger(
        batch_id=batch_id, poll_interval=10, end_time=start(sim) + 300, exponential_backoff=True, max_wait=60
    )
    drive(trigger, sim, sleeps)
    assert only_event(trigger)["status"] == "timeout"
    assert gaps(polls(sim, batch_id)) == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0, 50.0]


def test_unknown_status_keeps_waiting_and_is_warned_about_once(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    from tests.helpers import capture_logs

    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=1, call_seconds=(5.0, 5.0), outcomes=COMPLETED)
    sim.clock.advance(60)
    paused = {**sim.batch(batch_id), "status": "paused"}
    sim.inject("GET", f"/agents/calls/batches/{batch_id}", Fault(status=200, body=paused), times=3)
    trigger = CallBatchTrigger(batch_id=batch_id, poll_interval=10, end_time=start(sim) + 600)
    drive(trigger, sim, sleeps)

    with capture_logs() as logs:
        event = only_event(trigger)

    assert event["status"] == "success"
    assert len(polls(sim, batch_id)) == 4
    lines = [(entry["log_level"], str(entry["event"])) for entry in logs]
    assert len([text for level, text in lines if level == "warning" and "'paused'" in text]) == 1
    progress = next(text for level, text in lines if level == "info")
    assert progress == f"{batch_id} paused: 1 of 1 calls finished (100.0%), 1 dispatched"
    assert not any("+1415" in text or sim.api_key in text for _, text in lines)


BLOCKING_SOCKET_METHODS = (
    "accept",
    "connect",
    "connect_ex",
    "recv",
    "recv_into",
    "recvfrom",
    "send",
    "sendall",
    "sendto",
)


def forbid_blocking_calls_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Booby-trap what blocks a thread: each call made on a thread that runs an event loop is recorded.

    Blocking socket I/O (a socket in blocking mode: asyncio's own sockets are non-blocking), name
    lookups, ``time.sleep``, ``requests`` and Airflow's sync connection lookup. Other threads (the
    simulator's, an executor's) may block; the loop's thread may not. No clock is read: the verdict
    does not depend on how busy the machine is.
    """
    import socket

    import requests

    caught: list[str] = []

    def on_loop_thread() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def trap(name: str, original: Any, blocking: Any = None) -> Any:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if on_loop_thread() and (blocking is None or blocking(*args)):
                caught.append(name)
                raise AssertionError(f"{name} called on the event loop's thread")
            return original(*args, **kwargs)

        return guarded

    for method in BLOCKING_SOCKET_METHODS:
        original = getattr(socket.socket, method)
        monkeypatch.setattr(
            socket.socket, method, trap(f"socket.{method}", original, lambda sock, *_: sock.getblocking())
        )
    for name in ("getaddrinfo", "gethostbyname", "create_connection"):
        monkeypatch.setattr(socket, name, trap(f"socket.{name}", getattr(socket, name)))
    monkeypatch.setattr(time, "sleep", trap("time.sleep", time.sleep))
    monkeypatch.setattr(requests.Session, "send", trap("requests", requests.Session.send))
    lookup = CartesiaHook.get_connection.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(CartesiaHook, "get_connection", classmethod(trap("CartesiaHook.get_connection", lookup)))
    return caught


def run_together(triggers: list[CallBatchTrigger]) -> list[str]:
    """Run the triggers concurrently on one loop to their first event; their statuses."""

    async def all_events() -> list[TriggerEvent]:
        return await asyncio.gather(*(anext(t.run()) for t in triggers))

    return [e.payload["status"] for e in asyncio.run(all_events())]


def test_run_never_blocks_the_event_loop(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty triggers on one loop make no blocking call on the loop's thread (no clock involved).

    The connection must come from Airflow's async API and the batch from the async hook; blocking
    sockets, DNS, ``time.sleep`` and ``requests`` are booby-trapped on the loop's thread.
    """
    sim = cartesia_simulator
    sim.latency = 0.05
    ids = [sim.seed_batch(recipients=1, call_seconds=(5.0, 5.0), outcomes=COMPLETED) for _ in range(20)]
    sim.clock.advance(3600)
    caught = forbid_blocking_calls_on_the_loop(monkeypatch)

    statuses = run_together([CallBatchTrigger(batch_id=i, poll_interval=1) for i in ids])

    assert caught == []
    assert statuses == ["success"] * 20
    assert sim.count("GET") >= 20


BLOCKING_FETCHES = {
    "the sync hook": lambda trigger, hook, sim: hook.get_call_batch(trigger.batch_id),
    "a sync request": lambda trigger, hook, sim: __import__("requests").get(sim.url, timeout=5),
    "a raw blocking socket": lambda trigger, hook, sim: __import__("socket").create_connection(
        tuple(sim.url.split("//")[1].split(":"))
    ),
    "time.sleep": lambda trigger, hook, sim: time.sleep(0),
}


@pytest.mark.parametrize("blocking", list(BLOCKING_FETCHES))
def test_the_trap_catches_a_blocking_trigger(
    blocking: str, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the test above: each kind of blocking call inside ``run()`` is caught."""
    sim = cartesia_simulator
    ids = [sim.seed_batch(recipients=1, call_seconds=(5.0, 5.0), outcomes=COMPLETED) for _ in range(3)]
    sim.clock.advance(3600)
    fetch = BLOCKING_FETCHES[blocking]

    class Blocking(CallBatchTrigger):
        async def _fetch(self, hook: CartesiaHook) -> Any:
            fetch(self, hook, sim)
            return await super()._fetch(hook)

    caught = forbid_blocking_calls_on_the_loop(monkeypatch)

    with pytest.raises(AssertionError, match="called on the event loop's thread"):
        run_together([Blocking(batch_id=i, poll_interval=1) for i in ids])

    assert caught
