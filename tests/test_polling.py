"""Counters from the batch list: the page walk, the shared poller, and what waits cost per interval.

Costs are read from the simulator's request log (requests and response bytes per path), never from
a wall clock. The poller is driven directly (reads gathered at one instant make one round), and
through many CallBatchTriggers on one event loop.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from airflow_provider_cartesia.exceptions import CartesiaRateLimitError
from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
from airflow_provider_cartesia.models import CallBatch, CallBatchPage
from airflow_provider_cartesia.polling import (
    _POLLERS,
    MAX_LIST_PAGES,
    ListScan,
    active_pollers,
    poller_for,
)
from airflow_provider_cartesia.sensors.call_batch import CallBatchSensor
from airflow_provider_cartesia.testing import CartesiaSimulator, Fault
from airflow_provider_cartesia.triggers.call_batch import CallBatchTrigger

BATCHES = "/agents/calls/batches"
T0 = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
LONG_CALLS = (100_000.0, 100_001.0)


def _batch(n: int, minutes_ago: int) -> CallBatch:
    return CallBatch(id=f"acb_{n}", status="in_progress", created_at=T0 - timedelta(minutes=minutes_ago))


def _page(*batches: CallBatch, more: bool = True) -> CallBatchPage:
    return CallBatchPage(data=list(batches), has_more=more, next_page=batches[-1].id if more and batches else None)


def test_list_scan_walks_until_every_wanted_batch_is_seen() -> None:
    scan = ListScan({"acb_2": T0 - timedelta(minutes=2), "acb_5": T0 - timedelta(minutes=5)})
    assert scan.add(_page(_batch(1, 1), _batch(2, 2), _batch(3, 3))) is True
    assert scan.cursor == "acb_3" and scan.missing == ["acb_5"]
    assert scan.add(_page(_batch(4, 4), _batch(5, 5), _batch(6, 6))) is False
    assert set(scan.found) == {"acb_2", "acb_5"} and scan.pages == 2


def test_list_scan_stops_once_a_page_is_older_than_the_oldest_missing_batch() -> None:
    scan = ListScan({"acb_gone": T0 - timedelta(minutes=3)})
    assert scan.add(_page(_batch(1, 1), _batch(2, 2))) is True  # may still be further down
    assert scan.add(_page(_batch(3, 4), _batch(4, 5))) is False  # older than it: it is not in the list
    assert scan.missing == ["acb_gone"]


def test_list_scan_gives_up_after_max_pages_and_at_the_end_of_the_list() -> None:
    scan = ListScan({"acb_far": None}, max_pages=2)  # created_at unknown: no early stop
    assert scan.add(_page(_batch(1, 1))) is True
    assert scan.add(_page(_batch(2, 2))) is False
    assert ListScan({"acb_x": None}).add(_page(_batch(1, 1), more=False)) is False


def _reads(poller: Any, ids: list[str], created: dict[str, datetime | None]) -> Any:
    return asyncio.gather(*(poller.read(i, created.get(i)) for i in ids), return_exceptions=True)


def _run_poller(hook: CartesiaHook, agent: str, body: Callable[[Any], Any]) -> Any:
    """Run ``body(poller)`` on a fresh loop with one joined wait (interval 30 s) on a clock its sleeps advance."""
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds

    async def main() -> Any:
        poller = poller_for(hook.alist_call_batch_page, hook.cartesia_conn_id, agent, lambda: clock[0], sleep)
        token = poller.join(30.0)
        try:
            return await body(poller)
        finally:
            poller.leave(token)

    return asyncio.run(main())


def test_reads_at_one_instant_share_one_walk_of_the_agent_list(
    cartesia_simulator: CartesiaSimulator, hook: CartesiaHook
) -> None:
    sim = cartesia_simulator
    mine = [sim.seed_batch(agent_id="agent_a", recipients=1) for _ in range(150)]
    others = [sim.seed_batch(agent_id="agent_b", recipients=1) for _ in range(20)]
    created = {i: CallBatch.model_validate(sim.batch(i)).created_at for i in mine}

    answers = _run_poller(hook, "agent_a", lambda p: _reads(p, mine + others[:1], created))

    found = {batch.id for batch, _ in answers if batch is not None}
    assert found == set(mine)  # agent_b's batch is not in agent_a's list: the caller falls back to a GET
    assert answers[-1][0] is None
    listed = [r for r in sim.requests if r.path == BATCHES]
    assert [r.query.get("agent_id") for r in listed] == ["agent_a", "agent_a"]  # 151 reads, 2 pages of 100
    assert all(r.query["limit"] == "100" for r in listed)
    assert sim.count("GET", f"{BATCHES}/*") == 0


def test_a_missing_batch_costs_at_most_max_list_pages(
    cartesia_simulator: CartesiaSimulator, hook: CartesiaHook
) -> None:
    sim = cartesia_simulator
    for _ in range(1200):
        sim.seed_batch(agent_id="agent_a", recipients=1)
    _run_poller(hook, "agent_a", lambda p: _reads(p, ["acb_elsewhere"], {}))
    assert sim.count("GET", BATCHES) == MAX_LIST_PAGES


def test_a_failed_walk_fails_every_read_once_and_the_poller_backs_off(
    cartesia_simulator: CartesiaSimulator, hook: CartesiaHook, sleeps: Any
) -> None:
    sim = cartesia_simulator
    ids = [sim.seed_batch(agent_id="agent_a", recipients=1) for _ in range(3)]
    sim.inject("GET", BATCHES, Fault.rate_limited(retry_after="1"), times=5)  # one request and its 4 retries

    async def body(poller: Any) -> Any:
        first = await _reads(poller, ids, {})
        backoff = poller._next_round_at() - poller.last_round
        second = await _reads(poller, ids, {})
        return first, backoff, second

    first, backoff, second = _run_poller(hook, "agent_a", body)

    assert all(isinstance(a, CartesiaRateLimitError) for a in first)  # each wait sees the error once
    assert backoff == 60.0  # the poller's interval doubled, not each wait's
    assert {b.id for b, _ in second} == set(ids)
    assert sim.count("GET", BATCHES) == 5 + 1


def _drive_on_sim_clock(sim: CartesiaSimulator, triggers: list[CallBatchTrigger], sleeps: Any) -> None:
    """Every trigger (and so their poller) reads the simulator's clock; a sleep advances it, never back."""

    def now() -> float:
        return sim.clock.now().timestamp()

    async def sleep(seconds: float) -> None:
        target = now() + seconds
        await asyncio.sleep(0)
        if target > now():
            sim.clock.advance(target - now())

    for trigger in triggers:
        trigger._now = now  # type: ignore[method-assign]
        trigger._sleep = sleep  # type: ignore[method-assign]
        trigger.hook._asleep = sleeps.asleep


def test_many_waits_on_one_agent_cost_one_list_request_per_interval_and_a_get_only_at_the_end(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    """Twenty waits on 1,000-recipient batches, deferred with the agent known (as the sensor passes it)."""
    sim = cartesia_simulator
    settle_at = [600.0 + 60 * i for i in range(4)]  # four groups of batches settling at different times
    ids = [
        sim.seed_batch(
            agent_id="agent_a",
            recipients=1000,
            dispatch_interval=0.0001,
            call_seconds=(s, s),
            outcomes={"completed": 1.0},
        )
        for s in settle_at
        for _ in range(5)
    ]
    start = sim.clock.now().timestamp()
    triggers = [
        CallBatchTrigger(
            batch_id=i,
            poll_interval=30,
            end_time=start + 7200,
            agent_id="agent_a",
            batch_created_at=sim.batch(i)["created_at"],
        )
        for i in ids
    ]
    _drive_on_sim_clock(sim, triggers, sleeps)

    async def main() -> list[Any]:
        return await asyncio.gather(*(anext(t.run()) for t in triggers))

    events = asyncio.run(main())

    assert [e.payload["status"] for e in events] == ["success"] * 20
    assert all(e.payload["summary"]["recipient_status_counts"] == {"completed": 1000} for e in events)
    lists = [r for r in sim.requests if r.path == BATCHES]
    rounds = sorted({r.at for r in lists})
    assert len(lists) == len(rounds)  # one request per round: 20 batches fit one page
    assert len(rounds) <= (settle_at[-1] + 100) / 30 + 2, len(rounds)  # one round per 30 s interval
    for batch_id in ids:
        assert sim.count("GET", f"{BATCHES}/{batch_id}") == 1  # the confirmation, nothing else
    list_bytes = sim.bytes_served("GET", BATCHES)
    per_wait_per_interval = list_bytes / len(rounds) / len(ids)
    assert per_wait_per_interval < 2_000, per_wait_per_interval
    one_get = sim.bytes_served("GET", f"{BATCHES}/{ids[0]}")
    assert one_get > 150_000  # what each of those reads would have cost before
    assert not _POLLERS or all(not pollers for pollers in _POLLERS.values())  # idle pollers stopped


def test_a_cancelled_wait_leaves_the_poller_and_an_idle_poller_stops(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    ids = [
        sim.seed_batch(agent_id="agent_a", recipients=1, call_seconds=LONG_CALLS, outcomes={"completed": 1.0})
        for _ in range(2)
    ]
    triggers = [CallBatchTrigger(batch_id=i, poll_interval=30, agent_id="agent_a") for i in ids]
    _drive_on_sim_clock(sim, triggers, sleeps)
    seen: dict[str, Any] = {}

    async def main() -> None:
        tasks = [asyncio.ensure_future(anext(t.run())) for t in triggers]
        while sim.count("GET", BATCHES) < 3:
            await asyncio.sleep(0)
        (poller,) = active_pollers().values()
        seen["joined"] = len(poller.intervals)
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
        seen["after_cancel"] = len(poller.intervals)
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        # A round in flight (real HTTP to the simulator) finishes first; the bound only guards a hang.
        await asyncio.wait({poller._task}, timeout=60)
        seen["pollers_left"] = dict(active_pollers())
        seen["task_done"] = poller._task.done()

    asyncio.run(main())

    assert seen == {"joined": 2, "after_cancel": 1, "pollers_left": {}, "task_done": True}


def test_nothing_is_left_when_the_event_loop_closes_mid_wait(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(agent_id="agent_a", recipients=1, call_seconds=LONG_CALLS)
    trigger = CallBatchTrigger(batch_id=batch_id, poll_interval=30, agent_id="agent_a")
    _drive_on_sim_clock(sim, [trigger], sleeps)

    async def main() -> None:
        waiting = asyncio.ensure_future(anext(trigger.run()))  # asyncio.run cancels it at the end
        while sim.count("GET", BATCHES) < 2:
            await asyncio.sleep(0)
        assert not waiting.done()

    asyncio.run(main())
    gc.collect()
    assert all(not loop_pollers for loop_pollers in _POLLERS.values())
    assert trigger._poller is None


def test_the_sensor_pokes_read_counters_from_the_list_after_the_first(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(
        agent_id="agent_a",
        recipients=5000,
        dispatch_interval=0.0001,
        call_seconds=(300, 300),
        outcomes={"completed": 1.0},
    )
    for _ in range(30):
        sim.seed_batch(agent_id="agent_a", recipients=1)  # newer batches of the same agent
    sensor = CallBatchSensor(task_id="wait", batch_id=batch_id)
    verdicts = []
    for _ in range(5):
        verdicts.append(sensor.poll_batch(batch_id).outcome)
        sim.clock.advance(100)

    assert verdicts == ["waiting"] * 4 + ["success"]  # every call ends at 301 s
    gets = sim.count("GET", f"{BATCHES}/{batch_id}")
    assert gets == 1 + 1  # the first poke (learns the agent), then the confirmation
    listed = [r for r in sim.requests if r.path == BATCHES]
    assert {r.query["agent_id"] for r in listed} == {"agent_a"}
    assert sim.bytes_served("GET", BATCHES) / len(listed) < 20_000  # a page or two, never the recipients


def test_a_sensor_told_the_agent_reads_the_list_from_its_first_poke(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(agent_id="agent_a", recipients=500, call_seconds=LONG_CALLS)
    sensor = CallBatchSensor(task_id="wait", batch_id=batch_id, agent_id="agent_a", mode="reschedule")
    assert sensor.poll_batch(batch_id).outcome == "waiting"
    assert sim.count("GET", f"{BATCHES}/{batch_id}") == 0
    assert sim.count("GET", BATCHES) == 1


@pytest.mark.parametrize("recipients", [1, 99])
def test_a_small_batch_is_cheaper_to_get_than_to_list(
    recipients: int, cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(agent_id="agent_a", recipients=recipients, call_seconds=LONG_CALLS)
    sensor = CallBatchSensor(task_id="wait", batch_id=batch_id)
    for _ in range(3):
        assert sensor.poll_batch(batch_id).outcome == "waiting"
    assert sim.count("GET", f"{BATCHES}/{batch_id}") == 3
    assert sim.count("GET", BATCHES) == 0


def test_a_waiting_trigger_keeps_counters_never_recipients(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, sleeps: Any
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(agent_id="agent_a", recipients=2000, call_seconds=LONG_CALLS)
    trigger = CallBatchTrigger(batch_id=batch_id, poll_interval=30)  # agent unknown: the first read is a GET
    _drive_on_sim_clock(sim, [trigger], sleeps)
    watches: list[Any] = []
    original = trigger._poll

    async def spy(hook: Any, watch: Any, urgent: bool) -> Any:
        result = await original(hook, watch, urgent)
        watches.append((watch.last_batch.recipients, watch.agent_id))
        if len(watches) == 3:
            raise asyncio.CancelledError
        return result

    trigger._poll = spy  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(anext(trigger.run()))

    assert watches == [(None, "agent_a")] * 3
    assert sim.count("GET", f"{BATCHES}/{batch_id}") == 1  # the first read, then the list
    assert sim.count("GET", BATCHES) == 2


def test_a_wait_reads_recipient_statuses_only_never_numbers_or_metadata(
    cartesia_simulator: CartesiaSimulator, hook: CartesiaHook
) -> None:
    sim = cartesia_simulator
    batch_id = sim.seed_batch(
        recipients=[{"to_number": "+14155550123", "metadata": {"name": "Ada"}, "outcome": "completed"}]
    )
    sim.clock.advance(3600)
    batch = hook.get_call_batch_statuses(batch_id)
    assert batch.summary()["recipient_status_counts"] == {"completed": 1}
    dumped = batch.model_dump_json()
    assert "+14155550123" not in dumped and "Ada" not in dumped
    assert asyncio.run(hook.aget_call_batch_statuses(batch_id)).summary() == batch.summary()
