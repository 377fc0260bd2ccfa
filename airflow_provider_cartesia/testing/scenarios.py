"""Named scenarios: ready-made batches a person picks by name (``--scenario slow``) instead of by code.

Each scenario seeds one batch into a running :class:`CartesiaSimulator` and says what it shows.
The durations are in simulated seconds: at ``--speed 1`` (the CLI's default) they are real seconds,
which is what makes ``slow`` defer a sensor at its default ``poke_interval`` of 60 s.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from airflow_provider_cartesia.testing.faults import Fault

if TYPE_CHECKING:
    from airflow_provider_cartesia.testing.simulator import CartesiaSimulator

RATE_LIMITED_READS = 12
"""How many reads of the ``rate-limited`` batch get a 429 before the API answers again."""


@dataclass(frozen=True)
class Scenario:
    name: str
    help: str
    seed: Callable[[CartesiaSimulator], str]


def _slow(sim: CartesiaSimulator) -> str:
    # 30 recipients, one every 20 s: dispatched over 10 minutes, the last call ends about a minute later.
    return sim.seed_batch(
        name="Scenario: slow", recipients=30, dispatch_interval=20.0, call_seconds=(60.0, 150.0),
        outcomes={"completed": 0.8, "no_answer": 0.2},
    )  # fmt: skip


def _fails(sim: CartesiaSimulator) -> str:
    return sim.seed_batch(
        name="Scenario: fails", recipients=10, dispatch_interval=2.0, outcomes={"pre_dial_failure": 1}
    )


def _cancelled(sim: CartesiaSimulator) -> str:
    # Created two minutes ago at one recipient a second: 120 dialed, 80 never will be.
    start = sim.clock.now() - timedelta(seconds=120)
    batch_id = sim.seed_batch(
        name="Scenario: cancelled", recipients=200, created_at=start, call_seconds=(30.0, 120.0),
        outcomes={"completed": 0.7, "no_answer": 0.3},
    )  # fmt: skip
    sim.cancel_batch(batch_id)
    return batch_id


def _rate_limited(sim: CartesiaSimulator) -> str:
    batch_id = sim.seed_batch(name="Scenario: rate-limited", recipients=20, dispatch_interval=3.0)
    sim.inject("GET", f"/agents/calls/batches/{batch_id}", Fault.rate_limited(retry_after="2"), RATE_LIMITED_READS)
    return batch_id


def _large(sim: CartesiaSimulator) -> str:
    return sim.seed_batch(name="Scenario: large", recipients=5000, dispatch_interval=0.2, call_seconds=(20.0, 60.0))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "slow",
            "30 recipients dialed one every 20 s; settles after about 11 minutes at --speed 1, so a "
            "deferrable CallBatchSensor at its default poke_interval (60 s) really defers and its "
            "trigger polls about ten times.",
            _slow,
        ),
        Scenario(
            "fails",
            "10 recipients that all fail before dialing: the batch ends `failed` after 20 s and the "
            "sensor fails the task (default failure_statuses).",
            _fails,
        ),
        Scenario(
            "cancelled",
            "200 recipients, cancelled after 120 had been dialed: status `cancelled` at once, 80 "
            "recipients `cancelled`, calls in flight still finishing for up to 2 minutes.",
            _cancelled,
        ),
        Scenario(
            "rate-limited",
            f"20 recipients behind a 429 storm: the first {RATE_LIMITED_READS} reads of this batch get 429 "
            "(concurrency_limited, Retry-After: 2), then answers resume: the hook's retries and the "
            "sensor's max_consecutive_failures ride it out.",
            _rate_limited,
        ),
        Scenario(
            "large",
            "5,000 recipients (the API's maximum), one dialed every 0.2 s: a multi-MB batch read, "
            "settles after about 18 minutes at --speed 1.",
            _large,
        ),
    )
}


def describe() -> str:
    """Every scenario with its help, for ``--help``."""
    return "\n".join(
        textwrap.fill(s.help, width=100, initial_indent=f"  {s.name:<13} ", subsequent_indent=" " * 16)
        for s in SCENARIOS.values()
    )
