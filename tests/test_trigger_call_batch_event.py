"""CallBatchEventTrigger against the simulator, on the simulator's clock: one event per settled batch."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from airflow_provider_cartesia.testing import CartesiaSimulator, Fault
from airflow_provider_cartesia.triggers.call_batch_event import WATERMARK_KEY, CallBatchEventTrigger

BATCHES = "/agents/calls/batches"
DONE = {"completed": 1.0}


class MemoryStateStore:
    """Stands in for the asset state store the 3.3 triggerer injects (``aget``/``aset``)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))


def events_over(trigger: CallBatchEventTrigger, sim: CartesiaSimulator, sleeps: Any, rounds: int) -> list[dict]:
    """The payloads the trigger yields over ``rounds`` reads of the list (its sleeps advance the clock)."""
    done = [0]

    async def sleep(seconds: float) -> None:
        done[0] += 1
        if done[0] >= rounds:
            raise asyncio.CancelledError
        sim.clock.advance(seconds)

    trigger._now = lambda: sim.clock.now().timestamp()  # type: ignore[method-assign]
    trigger._sleep = sleep  # type: ignore[method-assign]
    trigger.hook._asleep = sleeps.asleep

    async def collect(stream: AsyncIterator[Any]) -> list[dict]:
        payloads: list[dict] = []
        try:
            async for event in stream:
                payloads.append(event.payload)
        except asyncio.CancelledError:
            pass
        return payloads

    return asyncio.run(collect(trigger.run()))


def since(sim: CartesiaSimulator) -> str:
    return (sim.clock.now() - timedelta(seconds=1)).isoformat()


def test_serialize_round_trips_without_the_key(cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str) -> None:
    trigger = CallBatchEventTrigger(agent_id="agent_a", poll_interval=30, since="2026-06-01T12:00:00Z")
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_cartesia.triggers.call_batch_event.CallBatchEventTrigger"
    assert kwargs["since"] == "2026-06-01T12:00:00+00:00"
    assert CallBatchEventTrigger(**kwargs).serialize() == (classpath, kwargs)
    assert cartesia_simulator.api_key not in json.dumps(kwargs)
    assert trigger.shared_stream_key() == CallBatchEventTrigger(**kwargs).shared_stream_key()
    assert (
        trigger.shared_stream_key() != CallBatchEventTrigger(agent_id="agent_b", poll_interval=30).shared_stream_key()
    )


def test_one_event_per_batch_as_it_settles_by_the_sensor_rule(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    start = since(sim)
    quick = sim.seed_batch(agent_id="agent_a", recipients=3, call_seconds=(30, 30), outcomes=DONE)
    slow = sim.seed_batch(agent_id="agent_a", recipients=2, call_seconds=(600, 600), outcomes=DONE)
    failed = sim.seed_batch(agent_id="agent_a", recipients=2, outcomes={"pre_dial_failure": 1.0})
    sim.seed_batch(agent_id="agent_b", recipients=1, call_seconds=(30, 30), outcomes=DONE)  # another agent
    trigger = CallBatchEventTrigger(agent_id="agent_a", poll_interval=60, since=start)

    events = events_over(trigger, sim, sleeps, rounds=15)

    outcomes = [(e["batch_id"], e["outcome"]) for e in events]
    assert sorted(outcomes[:2]) == sorted([(quick, "success"), (failed, "failure")])  # both settled by 60 s
    assert outcomes[2:] == [(slow, "success")]  # ten minutes later, once its calls ended
    quick_event = next(e for e in events if e["batch_id"] == quick)
    assert quick_event["total_calls_finished"] == quick_event["total_calls_dispatched"] == 3
    assert {e["status"] for e in events} == {"completed", "failed"}
    assert sim.count("GET", f"{BATCHES}/*") == 0  # counters only: never a recipient
    assert not any("+1415" in json.dumps(e) for e in events)
    # The slow batch was `completed` (dispatched) long before its calls ended: no event until then.
    assert sim.batch(slow)["total_calls_finished"] == 2


def test_a_restart_resumes_from_the_stored_watermark_and_loses_no_batch(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    start = since(sim)
    first = sim.seed_batch(agent_id="agent_a", recipients=1, call_seconds=(30, 30), outcomes=DONE)
    store = MemoryStateStore()
    before = CallBatchEventTrigger(agent_id="agent_a", poll_interval=60, since=start)
    before.asset_state_store = store  # type: ignore[assignment]
    assert [e["batch_id"] for e in events_over(before, sim, sleeps, rounds=4)] == [first]
    assert WATERMARK_KEY in store.values

    sim.clock.advance(600)  # the triggerer is down; meanwhile a batch is created and settles
    sim.seed_batch(agent_id="agent_a", recipients=1, call_seconds=(30, 30), outcomes=DONE)
    second = sim.batch_ids()[-1]
    sim.clock.advance(600)
    after = CallBatchEventTrigger(agent_id="agent_a", poll_interval=60, since=start)  # same kwargs as the DAG
    after.asset_state_store = store  # type: ignore[assignment]

    assert [e["batch_id"] for e in events_over(after, sim, sleeps, rounds=3)] == [second]


def test_without_a_state_store_a_restart_may_repeat_an_event_but_never_loses_one(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    start = since(sim)
    first = sim.seed_batch(agent_id="agent_a", recipients=1, call_seconds=(30, 30), outcomes=DONE)
    before = CallBatchEventTrigger(agent_id="agent_a", poll_interval=60, since=start)
    assert [e["batch_id"] for e in events_over(before, sim, sleeps, rounds=4)] == [first]
    second = sim.seed_batch(agent_id="agent_a", recipients=1, call_seconds=(30, 30), outcomes=DONE)
    sim.clock.advance(600)
    after = CallBatchEventTrigger(**before.serialize()[1])
    assert sorted(e["batch_id"] for e in events_over(after, sim, sleeps, rounds=2)) == sorted([first, second])


def test_failed_reads_back_off_and_carry_on_a_refused_key_ends_it(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = cartesia_simulator
    start = since(sim)
    batch_id = sim.seed_batch(agent_id="agent_a", recipients=1, call_seconds=(30, 30), outcomes=DONE)
    sim.inject("GET", BATCHES, Fault.server_error(503), times=10)  # two rounds of 1 + 4 tries
    trigger = CallBatchEventTrigger(agent_id="agent_a", poll_interval=60, since=start)
    assert [e["batch_id"] for e in events_over(trigger, sim, sleeps, rounds=4)] == [batch_id]
    reads = sorted({r.at for r in sim.requests if r.path == BATCHES})
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(reads)]
    assert gaps[:2] == [120.0, 240.0]  # the interval doubled after each failed read

    monkeypatch.setenv(
        "AIRFLOW_CONN_CARTESIA_WRONG", json.dumps({"conn_type": "cartesia", "host": sim.url, "password": "sk_car_no"})
    )
    refused = CallBatchEventTrigger(cartesia_conn_id="cartesia_wrong", poll_interval=60, since=start)
    from airflow_provider_cartesia.exceptions import CartesiaAuthError

    with pytest.raises(CartesiaAuthError):
        events_over(refused, sim, sleeps, rounds=3)


def test_siblings_share_one_read_through_the_shared_stream(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    """What the 3.3 triggerer does with one key: one ``open_shared_stream``, each sibling filters it."""
    sim = cartesia_simulator
    start = since(sim)
    done = sim.seed_batch(agent_id="agent_a", recipients=1, call_seconds=(30, 30), outcomes=DONE)
    sim.clock.advance(120)
    kwargs = CallBatchEventTrigger(agent_id="agent_a", poll_interval=60, since=start).serialize()[1]
    siblings = [CallBatchEventTrigger(**kwargs) for _ in range(3)]

    async def main() -> list[Any]:
        snapshots = [snap async for snap in _first(CallBatchEventTrigger.open_shared_stream(kwargs))]

        async def replay() -> AsyncIterator[Any]:
            for snap in snapshots:
                yield snap

        seen = []
        for trigger in siblings:
            seen.append([e.payload["batch_id"] async for e in trigger.filter_shared_stream(replay())])
        return seen

    assert asyncio.run(main()) == [[done]] * 3
    assert sim.count("GET", BATCHES) == 1


async def _first(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for item in stream:
        yield item
        return
