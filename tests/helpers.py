"""Helpers shared by test modules (import these, never ``tests.conftest``: it configures Airflow)."""

from __future__ import annotations

import json

from airflow_provider_cartesia.testing import CartesiaSimulator


def cartesia_connection_json(sim: CartesiaSimulator, **extra: object) -> str:
    """An ``AIRFLOW_CONN_*`` value (JSON form) pointing at the simulator."""
    return json.dumps(
        {
            "conn_type": "cartesia",
            "host": sim.url,
            "password": sim.api_key,
            "extra": {"api_version": "2026-03-01", **extra},
        }
    )


class SleepRecorder:
    """Stands in for ``time.sleep`` / ``asyncio.sleep``: records the waits, waits for nothing."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)
