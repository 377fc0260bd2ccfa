"""1,000 CallBatchTriggers in one event loop, against the simulator, side by side with the blocking pattern.

Run: ``.venv/bin/python benchmarks/bench_trigger.py`` (under two minutes; ``--triggers``, ``--cap`` and
``--only`` change the set-up, ``--no-write`` only prints). Writes the "trigger" section of
docs/benchmarks.md.

Set-up, the same for every contender:

- The simulator runs in a process of its own (``multiprocessing``, spawn), on a clock that follows the
  wall clock, adding 100 ms to every response (about a real round trip to the API).
- Each contender runs in a fresh interpreter (clean RSS and CPU figures). When it is ready, the
  parent seeds 1,000 two-recipient batches whose calls end at random times 4-25 s later, and hands it
  their ids and settle times; it starts one trigger per batch (poll interval 1 s) in one event loop.
- Contenders: ``native async`` (CallBatchTrigger: the hook's httpx path, pools shared by the loop),
  ``sync hook in a thread pool`` (``asyncio.to_thread``, the default executor) and ``blocking sync
  hook in run()`` (what two anchor providers do).

Measured per contender: detection latency (event time minus the moment the batch settled, p50 and
p99; a batch not detected when the run stopped counts as at least the time it had been settled, ">"),
polls per second while all triggers wait (2-5 s into the run), CPU seconds per poll of the
triggers' process, and RSS growth per waiting trigger (5 s into the run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CONTENDERS = {
    "async": "native async (CallBatchTrigger: the agent's list, one walk per interval)",
    "async-get": "native async, one GET per wait (the hook's httpx path)",
    "thread": "sync hook in a thread pool",
    "blocking": "blocking sync hook in run()",
}
LATENCY = 0.1
POLL_INTERVAL = 1.0
MAX_TALK = 12.0
SETTLE_WINDOW = (4.0, 13.0 + MAX_TALK)
THROUGHPUT_WINDOW = (2.0, 5.0)
RSS_AT = 5.0
AGENT_ID = "agent_sim"  # the simulator's default agent, that of every seeded batch


# ---- the simulator process ---------------------------------------------------------------------------


def serve(conn: Any, latency: float) -> None:
    """Child process: a real-time simulator; answers ``seed`` and ``count`` requests from the parent."""
    from datetime import datetime, timezone

    from airflow_provider_cartesia.testing import CartesiaSimulator, SimClock

    sim = CartesiaSimulator(clock=SimClock.real(start=datetime.now(timezone.utc)), latency=latency, seed=7).start()
    conn.send({"url": sim.url, "api_key": sim.api_key})
    rng = random.Random(42)
    while True:
        command, args = conn.recv()
        if command == "seed":
            count, max_talk = args
            batches = []
            for i in range(count):
                # Two recipients dispatched 0.5 s apart, each ringing 2-12 s, then talking 1 to max_talk s:
                # the batch settles somewhere between about 4 and 13 + max_talk seconds from now.
                talk = rng.uniform(1.0, max_talk)
                batch_id = sim.seed_batch(
                    name=f"bench {i}",
                    recipients=2,
                    dispatch_interval=0.5,
                    call_seconds=(talk, talk),
                    outcomes={"completed": 1.0},
                )
                settled = sim.batch_times(batch_id).all_finished_at
                assert settled is not None
                batches.append((batch_id, settled.timestamp()))
            conn.send(batches)
        elif command == "count":
            conn.send(sim.count("GET", "/agents/calls/batches/*"))
        elif command == "stop":
            sim.stop()
            conn.send(None)
            return
        else:  # pragma: no cover
            conn.send(ValueError(command))


# ---- a contender process -------------------------------------------------------------------------------


def contender(kind: str, cap: float) -> None:
    """Child interpreter: waits for the batch list on stdin, runs the triggers, prints results as JSON."""
    from airflow_provider_cartesia.exceptions import CartesiaError
    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
    from airflow_provider_cartesia.models import CallBatch
    from airflow_provider_cartesia.triggers.call_batch import CallBatchTrigger

    poll_times: list[float] = []

    stop_at = [float("inf")]  # set when the batches arrive

    def _count_poll() -> None:
        now = time.monotonic()
        if now >= stop_at[0]:
            # The run is over. The blocking contender cannot be interrupted from outside (its loop is
            # busy in its polls), so every contender stops itself here.
            raise asyncio.CancelledError
        poll_times.append(now)

    class Native(CallBatchTrigger):
        async def _poll(self, hook: CartesiaHook, watch: Any, urgent: bool) -> Any:
            _count_poll()
            return await super()._poll(hook, watch, urgent)

    def get_per_wait(fetch: Callable[[CartesiaHook, str], Awaitable[CallBatch]]) -> type[CallBatchTrigger]:
        class GetPerWait(CallBatchTrigger):
            async def _poll(self, hook: CartesiaHook, watch: Any, urgent: bool) -> Any:
                _count_poll()
                try:
                    batch = await fetch(hook, self.batch_id)
                except CartesiaError as exc:
                    return watch.failed(exc), None
                return watch.observe(batch), None

        return GetPerWait

    async def thread_get(hook: CartesiaHook, batch_id: str) -> CallBatch:
        return await asyncio.to_thread(hook.get_call_batch, batch_id)

    async def blocking_get(hook: CartesiaHook, batch_id: str) -> CallBatch:
        return hook.get_call_batch(batch_id)

    cls = {
        "async": Native,
        "async-get": get_per_wait(lambda hook, batch_id: hook.aget_call_batch(batch_id)),
        "thread": get_per_wait(thread_get),
        "blocking": get_per_wait(blocking_get),
    }[kind]

    async def main() -> dict[str, Any]:
        import psutil

        process = psutil.Process()
        # Warm up what every real triggerer has loaded already: the modules, a hook, the connection.
        warm = CartesiaHook()
        await warm.asettings()
        print("ready", flush=True)
        batches = json.loads(sys.stdin.readline())
        rss_before = process.memory_info().rss
        cpu_before = _cpu_seconds()
        started = time.time()
        started_mono = time.monotonic()
        stop_at[0] = started_mono + cap
        end_time = started + cap + 60  # the run stops at the cap; the deadline is no part of the test
        detected: dict[str, float] = {}
        statuses: dict[str, str] = {}

        async def wait(batch_id: str) -> None:
            # As the sensor defers: its first poke read the batch, so the trigger knows the agent.
            agent = {"agent_id": AGENT_ID} if kind == "async" else {}
            trigger = cls(batch_id=batch_id, poll_interval=POLL_INTERVAL, end_time=end_time, **agent)
            async for event in trigger.run():
                statuses[batch_id] = event.payload["status"]
                if event.payload["status"] == "success":
                    detected[batch_id] = time.time()
                return

        tasks = [asyncio.create_task(wait(batch_id)) for batch_id, _ in batches]
        rss_waiting = None
        deadline = started_mono + cap + 5
        while time.monotonic() < deadline and not all(t.done() for t in tasks):
            await asyncio.sleep(0.05)
            if rss_waiting is None and time.monotonic() - started_mono >= RSS_AT:
                # (The blocking contender's loop only gets here once its polls let it: later.)
                rss_waiting = (process.memory_info().rss, len(batches) - len(statuses))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.monotonic() - started_mono
        return {
            "kind": kind,
            "batches": batches,
            "detected": detected,
            "statuses": statuses,
            "started": started,
            "elapsed": elapsed,
            "cap": cap,
            "poll_offsets": [t - started_mono for t in poll_times],
            "cpu_seconds": _cpu_seconds() - cpu_before,
            "rss_before": rss_before,
            "rss_waiting": rss_waiting,
        }

    print(json.dumps(asyncio.run(main())), flush=True)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- the parent: orchestration and the report ---------------------------------------------------------


def run_contender(kind: str, triggers: int, cap: float, sim: Any, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--contender", kind, "--cap", str(cap)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    while (line := proc.stdout.readline()).strip() != "ready":
        if not line:
            raise RuntimeError(f"contender {kind} exited before it was ready")
    sim.send(("count", None))
    count_before = sim.recv()
    sim.send(("seed", (triggers, MAX_TALK)))
    batches = sim.recv()
    proc.stdin.write(json.dumps(batches) + "\n")
    proc.stdin.flush()
    try:
        out, _ = proc.communicate(timeout=cap + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    sim.send(("count", None))
    result["requests"] = sim.recv() - count_before
    return result


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    stop = result["started"] + result["elapsed"]
    latencies: list[tuple[float, bool]] = []  # (seconds, censored)
    for batch_id, settled in result["batches"]:
        if batch_id in result["detected"]:
            latencies.append((result["detected"][batch_id] - settled, False))
        else:
            latencies.append((max(stop - settled, 0.0), True))
    ordered = sorted(latencies)

    def pct(q: float) -> str:
        seconds, censored = ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
        return f"{'>' if censored else ''}{seconds:.2f} s"

    low, high = THROUGHPUT_WINDOW
    in_window = sum(1 for t in result["poll_offsets"] if low <= t < high)
    polls = len(result["poll_offsets"])
    rss_waiting = result["rss_waiting"]
    per_trigger = (rss_waiting[0] - result["rss_before"]) / rss_waiting[1] if rss_waiting and rss_waiting[1] else None
    others = sorted({s for s in result["statuses"].values() if s != "success"})
    return {
        "detected": f"{len(result['detected']):,} of {len(result['batches']):,}",
        "other_events": others,
        "p50": pct(50),
        "p99": pct(99),
        "polls_per_s": in_window / (high - low),
        "polls": polls,
        "requests": result["requests"],
        "cpu_per_poll_ms": 1000 * result["cpu_seconds"] / polls if polls else float("nan"),
        "rss_per_trigger_kb": per_trigger / 1024 if per_trigger is not None else None,
        "elapsed": result["elapsed"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--cap", type=float, default=35.0, help="seconds a contender may run (default 35)")
    parser.add_argument("--contender", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS), help="run only these contenders")
    parser.add_argument("--no-write", action="store_true", help="print the figures, leave docs/benchmarks.md alone")
    args = parser.parse_args()
    if args.contender:
        contender(args.contender, args.cap)
        return 0

    began = time.monotonic()
    load = os.getloadavg()[0]
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    server = ctx.Process(target=serve, args=(child_end, LATENCY), daemon=True)
    server.start()
    info = parent_end.recv()
    home = tempfile.mkdtemp(prefix="bench-trigger-")
    env = {
        **os.environ,
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW_CONN_CARTESIA_DEFAULT": json.dumps(
            {"conn_type": "cartesia", "host": info["url"], "password": info["api_key"]}
        ),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    rows = {}
    try:
        for kind in args.only or list(CONTENDERS):
            print(f"running {CONTENDERS[kind]} with {args.triggers:,} triggers ...", flush=True)
            result = run_contender(kind, args.triggers, args.cap, parent_end, env)
            rows[kind] = summarize(result)
            print(f"  {rows[kind]}", flush=True)
            offsets = result["poll_offsets"]
            print("  polls in each second:", [sum(1 for t in offsets if i <= t < i + 1) for i in range(int(args.cap))])
    finally:
        parent_end.send(("stop", None))
        parent_end.recv()
        server.join(timeout=10)

    if set(rows) != set(CONTENDERS):
        return 0  # a partial run: figures printed above, nothing to compare or write
    native, blocking = rows["async"], rows["blocking"]
    ratio = native["polls_per_s"] / blocking["polls_per_s"] if blocking["polls_per_s"] else float("inf")
    header = (
        "| contender | detected | detection p50 | detection p99 | polls/s (all waiting) | CPU ms per poll "
        "| RSS per waiting trigger |\n|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for kind, row in rows.items():
        rss = f"{row['rss_per_trigger_kb']:.1f} KB" if row["rss_per_trigger_kb"] is not None else "n/a"
        lines.append(
            f"| {CONTENDERS[kind]} | {row['detected']} | {row['p50']} | {row['p99']} | {row['polls_per_s']:.1f} "
            f"| {row['cpu_per_poll_ms']:.2f} | {rss} |"
        )
    p99_ok = not native["p99"].startswith(">") and float(native["p99"].split()[0]) <= POLL_INTERVAL + 0.5
    rss_ok = native["rss_per_trigger_kb"] is not None and native["rss_per_trigger_kb"] < 100
    verdicts = [
        f"p99 detection {native['p99']} (target: one poll interval + 0.5 s = {POLL_INTERVAL + 0.5:g} s): "
        + ("met" if p99_ok else "**missed**"),
        f"{native['polls_per_s']:.0f} polls/s, {ratio:.0f}x the blocking pattern (target: at least 20x): "
        + ("met" if ratio >= 20 else "**missed**"),
        f"{native['rss_per_trigger_kb'] or float('nan'):.1f} KB RSS per waiting trigger (target: under 100 KB): "
        + ("met" if rss_ok else "**missed**"),
    ]
    executor_threads = min(32, (os.cpu_count() or 1) + 4)
    from airflow_provider_cartesia.hooks.cartesia import ASYNC_CLIENT_CONNECTIONS, ASYNC_CLIENTS

    body = f"""
{args.triggers:,} triggers per contender in one event loop, each waiting for its own two-recipient
batch; poll interval {POLL_INTERVAL:g} s; the batches' calls end at random times
{SETTLE_WINDOW[0]:g}-{SETTLE_WINDOW[1]:g} s after the start. The simulator runs in a process of its own on
a real-time clock and adds {1000 * LATENCY:.0f} ms to every response. Each contender runs in a fresh
process for at most {args.cap:g} s; trigger logging at WARNING. Load average before the run: {load:.2f}
(other work on this shared machine shows up in the figures).

{header}{chr(10).join(lines)}

Native async CallBatchTrigger against the issue's targets:

- {verdicts[0]}
- {verdicts[1]}
- {verdicts[2]}

How to read it:

- Detection latency is the trigger's event time minus the moment the batch's last call ended. A batch
  still undetected when the run stopped counts as at least the time it had been settled (">").
- Polls/s is counted {THROUGHPUT_WINDOW[0]:g}-{THROUGHPUT_WINDOW[1]:g} s into the run, while every trigger
  waits and asks for {args.triggers:,} polls/s in all. CPU is the triggers' process only,
  over the whole run. RSS growth is read {RSS_AT:g} s in (the blocking contender's loop lets the reader
  run only later) and divided by the triggers without an event yet.
- Blocking sync hook in run(): every poll holds the event loop for a whole round trip, so all
  {args.triggers:,} triggers share about {blocking["polls_per_s"]:.0f} polls/s; most batches are never polled
  after they settle within the run. The thread pool is capped by the default executor's
  {executor_threads} threads.
- A poll of the native trigger reads its counters from the agent's batch list: one walk of the list
  per interval serves every waiting trigger (the trigger knows the agent, as when the sensor defers),
  and a settled batch costs one confirming GET. The GET-per-wait row is the workload before the list.
- The hook's async path takes up to {ASYNC_CLIENTS} small httpx clients of {ASYNC_CLIENT_CONNECTIONS}
  connections per event loop in turn (`hooks/cartesia.py`): httpcore 1.0's pool does work in
  proportion to connections x queued requests on every request, so one big pool is slow under bursts.
- The simulator listens with a backlog of 1,024, not the standard library's 5: with 5, a pool
  opening a hundred connections at once loses SYNs, which come back 1, 3 or 7 s later.
"""
    print(body)
    if not args.no_write:
        from _report import write_section

        write_section(
            "trigger", "CallBatchTrigger: 1,000 concurrent waits", ".venv/bin/python benchmarks/bench_trigger.py", body
        )
    print(f"done in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
