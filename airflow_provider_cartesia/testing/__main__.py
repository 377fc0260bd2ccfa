"""Run the Cartesia simulator from a shell: ``python -m airflow_provider_cartesia.testing``.

Prints the URL, the simulator's API key and an ``export AIRFLOW_CONN_CARTESIA_DEFAULT=...`` line to
paste, then the id of each seeded batch, then serves until SIGINT or SIGTERM and exits with status 0.
The key is the simulator's own test key (never give it a real Cartesia key): it is printed so that
the connection line works as pasted.

Examples::

    python -m airflow_provider_cartesia.testing --port 8089 --scenario slow --scenario fails
    python -m airflow_provider_cartesia.testing --seed-batch 25 --speed 30
    CARTESIA_SIMULATOR_API_KEY=sk_car_mine python -m airflow_provider_cartesia.testing --tick 5
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType

from airflow_provider_cartesia.testing.clock import SimClock
from airflow_provider_cartesia.testing.scenarios import SCENARIOS, describe
from airflow_provider_cartesia.testing.simulator import DEFAULT_API_KEY, CartesiaSimulator

API_KEY_ENV = "CARTESIA_SIMULATOR_API_KEY"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_cartesia.testing",
        description="Serve a simulated Cartesia agent-calls API on a loopback address. On start it prints the "
        "URL, the API key and a line to paste that points Airflow's cartesia_default connection at it.",
        epilog="scenarios (--scenario NAME, repeatable; durations at --speed 1):\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: an ephemeral port, printed)")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"the key clients must send (default: ${API_KEY_ENV}, else the built-in test key)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for ids and outcomes (default 0)")
    parser.add_argument("--seed-batch", type=int, metavar="N", help="create a batch of N recipients at start")
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help=f"seed a named scenario batch at start, see below ({', '.join(SCENARIOS)})",
    )
    clock = parser.add_mutually_exclusive_group()
    clock.add_argument(
        "--speed", type=float, default=1.0, help="simulated seconds per real second (default 1: real time)"
    )
    clock.add_argument(
        "--tick",
        type=float,
        metavar="S",
        help="use a manual clock that advances S simulated seconds per request instead of real time",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every response")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.api_key is not None:
        api_key = args.api_key
    elif os.environ.get(API_KEY_ENV):
        api_key = os.environ[API_KEY_ENV]
    else:
        api_key = DEFAULT_API_KEY
    if args.tick is not None:
        clock, clock_text = SimClock(tick_per_request=args.tick), f"manual, +{args.tick:g} s per request"
    else:
        clock, clock_text = SimClock.real(speed=args.speed), f"real time x{args.speed:g}"

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    try:
        sim = CartesiaSimulator(
            api_key=api_key, host=args.host, port=args.port, clock=clock, seed=args.seed, latency=args.latency
        )
        sim.start()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"URL: {sim.url}")
        print(f"API key: {api_key}")
        print(f"Clock: {clock_text}")
        print("Connection: paste this where Airflow runs (workers, scheduler and triggerer):")
        print(f"export AIRFLOW_CONN_CARTESIA_DEFAULT='{sim.connection_json()}'")
        if args.seed_batch:
            print(f"Seeded batch: {sim.seed_batch(recipients=args.seed_batch)} ({args.seed_batch} recipients)")
        for name in args.scenario:
            print(f"Scenario {name}: {SCENARIOS[name].seed(sim)}")
        if args.seed_batch or args.scenario:
            print("Watch one: python -m airflow_provider_cartesia batches watch <batch id>")
        print("Serving until SIGINT or SIGTERM.", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
