"""`make demo` (foundation version): drive the hook against the bundled simulator.

Starts the simulator with a seeded campaign on a sped-up clock, waits with the hook until every call
has ended, and prints the outcome counts. The example-DAG issue replaces this with a real DAG run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter


def main() -> int:
    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
    from airflow_provider_cartesia.testing import CartesiaSimulator, SimClock

    with CartesiaSimulator(clock=SimClock.real(speed=20.0)) as sim:
        batch_id = sim.seed_batch(name="Demo campaign", recipients=200, dispatch_interval=0.5)
        os.environ["AIRFLOW_CONN_CARTESIA_DEMO"] = json.dumps(
            {"conn_type": "cartesia", "host": sim.url, "password": sim.api_key}
        )
        hook = CartesiaHook("cartesia_demo")
        print(f"Simulator at {sim.url}; waiting for batch {batch_id}")
        deadline = time.monotonic() + 120
        while True:
            batch = hook.get_call_batch(batch_id)
            print(" ", batch.progress_line())
            if batch.is_settled:
                break
            if time.monotonic() > deadline:
                print("The demo batch did not settle within 120 s", file=sys.stderr)
                return 1
            time.sleep(1.0)
        outcomes = Counter((r.status, r.end_reason or r.error_message or "-") for r in batch.recipients or ())
    print("\nstatus      end reason              recipients")
    for (status, reason), count in outcomes.most_common():
        print(f"{status or '?':<11} {reason:<23} {count:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
