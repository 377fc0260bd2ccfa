"""Waits on 5,000-recipient batches: counters from the shared list walk vs today's per-batch GET, side by side.

Run: ``.venv/bin/python benchmarks/bench_polling.py`` (about four minutes; ``--no-write`` only prints,
``--quick`` shrinks every scenario). Writes the "polling" section of docs/benchmarks.md.

- Bytes and parse time per wait per interval: one 5,000-recipient batch as the simulator serves it
  (GET) against a list page of 100 batches of the agent (amortised over the 100 waits it serves).
- Concurrent waits: one fresh interpreter per scenario runs N CallBatchTriggers (poll interval 5 s,
  agent known as after the sensor's first poke) in one event loop against a stand-in API in its own
  process: the list and GET routes with the simulator's bodies (5,000 recipients each, 844 KB) and
  100 ms added to every response. (The simulator itself would hold 5 million recipients per 1,000
  batches; the stand-in serves precomputed bodies.) Batches settle at random times; measured:
  detection latency (event time minus settle time), requests and bytes per 5 s interval, CPU per wait
  per interval, RSS per waiting trigger. The per-batch GET path (what every wait did before) runs in
  the same way, keeping its last batch as it did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LATENCY = 0.1
INTERVAL = 5.0
RECIPIENTS = 5000
SETTLING = 200
"""Batches that settle during a run (the others keep waiting): each costs one 844 KB confirmation GET."""
API_KEY = "sk_car_bench"


# ---- the stand-in API (its own process) ----------------------------------------------------------------


class StandIn:
    def __init__(self) -> None:
        self.batches: dict[str, dict[str, Any]] = {}
        self.by_agent: dict[str, list[str]] = {}
        self.position: dict[str, int] = {}
        self.settle: dict[str, float] = {}
        self.log: list[tuple[float, str, int]] = []
        self.recipients = b"[]"

    def setup(self, n: int, agents: int, settling: int, window: tuple[float, float], seed: int) -> list[Any]:
        from airflow_provider_cartesia.testing import CartesiaSimulator

        sim = CartesiaSimulator()
        one = sim.seed_batch(recipients=RECIPIENTS, outcomes={"completed": 1.0}, call_seconds=(1, 1))
        sim.clock.advance(3600)
        self.recipients = json.dumps(sim.batch(one)["recipients"], separators=(",", ":")).encode()
        rng = random.Random(seed)
        now = time.time()
        out = []
        for i in range(n):
            batch_id = f"acb_bench{i:06d}"
            agent = f"agent_{i % agents:03d}"
            created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 3600 + i * 0.001)) + f".{i % 1000:03d}Z"
            settle_at = now + rng.uniform(*window) if i < settling else now + 10**6
            self.batches[batch_id] = {"id": batch_id, "agent_id": agent, "created_at": created}
            self.settle[batch_id] = settle_at
            self.by_agent.setdefault(agent, []).insert(0, batch_id)
            out.append([batch_id, agent, created, settle_at])
        for ids in self.by_agent.values():
            for index, batch_id in enumerate(ids):
                self.position[batch_id] = index
        self.log.clear()
        return out

    def view(self, batch_id: str) -> dict[str, Any]:
        settled = time.time() >= self.settle[batch_id]
        return {
            **self.batches[batch_id],
            "name": "bench",
            "from_number_id": "pn_bench",
            "region": "US",
            "target_concurrency_limit": 10,
            "status": "completed",
            "total_calls_scheduled": RECIPIENTS,
            "total_calls_dispatched": RECIPIENTS,
            "total_calls_finished": RECIPIENTS if settled else RECIPIENTS - 7,
            "retry_count": 0,
            "last_updated_at": self.batches[batch_id]["created_at"],
        }

    def answer(self, path: str, query: dict[str, str]) -> bytes:
        if path == "/agents/calls/batches":
            ids = self.by_agent.get(query.get("agent_id", ""), [])
            start = self.position[query["starting_after"]] + 1 if query.get("starting_after") else 0
            limit = int(query.get("limit", "10"))
            page = ids[start : start + limit]
            more = start + limit < len(ids)
            body = {"data": [self.view(i) for i in page], "has_more": more, "next_page": page[-1] if more else None}
            return json.dumps(body, separators=(",", ":")).encode()
        batch_id = path.rsplit("/", 1)[-1]
        head = json.dumps(self.view(batch_id), separators=(",", ":")).encode()
        return head[:-1] + b',"recipients":' + self.recipients + b"}"


async def serve(port_file: str) -> None:
    api = StandIn()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                _, target, _ = line.decode().split(" ", 2)
                length = 0
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                payload = await reader.readexactly(length) if length else b""
                split = urlsplit(target)
                query = dict(parse_qsl(split.query))
                if split.path == "/_setup":
                    args = json.loads(payload)
                    body = json.dumps(api.setup(**args)).encode()
                elif split.path == "/_stats":
                    body = json.dumps(api.log).encode()
                else:
                    await asyncio.sleep(LATENCY)
                    body = api.answer(split.path, query)
                    kind = "list" if split.path == "/agents/calls/batches" else "get"
                    api.log.append((time.time(), kind, len(body)))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=2**20)
    Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


# ---- a scenario (its own interpreter) ------------------------------------------------------------------


def scenario(kind: str, url: str, batches: list[Any], cap: float) -> dict[str, Any]:
    import psutil

    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
    from airflow_provider_cartesia.triggers.call_batch import CallBatchTrigger
    from airflow_provider_cartesia.waiting import BatchWatch, Verdict

    class PerBatchGet(CallBatchTrigger):
        """Today's path: a GET of the batch, every recipient, at every poll; the wait keeps it."""

        async def _poll(self, hook: CartesiaHook, watch: BatchWatch, urgent: bool) -> tuple[Verdict, float | None]:
            from airflow_provider_cartesia.exceptions import CartesiaError

            try:
                batch = await hook.aget_call_batch(self.batch_id)  # full models, as before
            except CartesiaError as exc:
                return watch.failed(exc), None
            verdict = watch.observe(batch)
            watch.last_batch = batch
            return verdict, None

    cls = PerBatchGet if kind == "get" else CallBatchTrigger
    import logging

    logging.disable(logging.INFO)  # a progress line per poll is not what is measured

    async def main() -> dict[str, Any]:
        process = psutil.Process()
        warm = CartesiaHook()
        await warm.asettings()
        rss_before = process.memory_info().rss
        started = time.time()
        end_time = started + cap + 120
        detected: dict[str, float] = {}

        async def wait(batch_id: str, agent: str, created: str) -> None:
            trigger = cls(
                batch_id=batch_id, poll_interval=INTERVAL, end_time=end_time, agent_id=agent, batch_created_at=created
            )
            async for event in trigger.run():
                if event.payload["status"] == "success":
                    detected[batch_id] = time.time()
                return

        tasks = [asyncio.create_task(wait(b, a, c)) for b, a, c, _ in batches]
        samples: list[tuple[float, float, int]] = []  # (offset, cpu, rss)
        lags: list[float] = []
        while time.time() - started < cap:
            before = time.monotonic()
            await asyncio.sleep(0.25)
            lags.append(time.monotonic() - before - 0.25)
            usage = resource.getrusage(resource.RUSAGE_SELF)
            samples.append((time.time() - started, usage.ru_utime + usage.ru_stime, process.memory_info().rss))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "started": started,
            "detected": detected,
            "samples": samples,
            "rss_before": rss_before,
            "lag_p99": sorted(lags)[int(0.99 * (len(lags) - 1))] if lags else 0.0,
        }

    return asyncio.run(main())


# ---- the parent --------------------------------------------------------------------------------------


def bytes_and_parse() -> dict[str, float]:
    """GET of one 5,000-recipient batch vs a list page of 100 batches, as the simulator serves them."""
    import statistics

    from airflow_provider_cartesia.api import parse_model
    from airflow_provider_cartesia.models import CallBatch, CallBatchPage
    from airflow_provider_cartesia.testing import CartesiaSimulator
    from airflow_provider_cartesia.testing.views import batch_json

    sim = CartesiaSimulator()
    ids = [sim.seed_batch(agent_id="agent_a", recipients=RECIPIENTS if i == 0 else 2) for i in range(100)]
    sim.clock.advance(30)
    full = json.dumps(sim.batch(ids[0]), separators=(",", ":")).encode()
    with sim._api.lock:
        state = sim._api.state
        data = [batch_json(state.batches[i], sim.clock.now(), with_recipients=False) for i in reversed(ids)]
    page = json.dumps({"data": data, "has_more": False, "next_page": None}, separators=(",", ":")).encode()

    def timed(fn: Any) -> float:
        runs = []
        for _ in range(15):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    get_parse = timed(lambda: parse_model(CallBatch, full, "GET", "/x"))
    page_parse = timed(lambda: parse_model(CallBatchPage, page, "GET", "/x"))
    return {"get_bytes": len(full), "page_bytes": len(page), "get_parse": get_parse, "page_parse": page_parse}


def run_scenario(name: str, kind: str, port: int, n: int, agents: int, settling: int, window: Any, cap: float) -> Any:
    import requests

    batches = requests.post(
        f"http://127.0.0.1:{port}/_setup",
        json={"n": n, "agents": agents, "settling": settling, "window": window, "seed": n + agents},
        timeout=600,
    ).json()
    env = {
        **os.environ,
        "AIRFLOW_CONN_CARTESIA_DEFAULT": json.dumps(
            {"conn_type": "cartesia", "host": f"http://127.0.0.1:{port}", "password": API_KEY}
        ),
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--scenario", kind, "--url", str(port), "--cap", str(cap)],
        input=json.dumps(batches),
        capture_output=True,
        text=True,
        env=env,
        timeout=cap + 600,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    log = requests.get(f"http://127.0.0.1:{port}/_stats", timeout=60).json()
    return summarize(name, kind, n, agents, batches, result, log, cap)


def summarize(name: str, kind: str, n: int, agents: int, batches: Any, result: Any, log: Any, cap: float) -> Any:
    started = result["started"]
    settle = {b: s for b, _, _, s in batches if s < started + cap}
    stop = started + cap
    latencies = sorted(
        (result["detected"][b] - s, False) if b in result["detected"] else (max(stop - s, 0.0), True)
        for b, s in settle.items()
    )
    p = lambda q: latencies[min(len(latencies) - 1, round(q * (len(latencies) - 1)))]  # noqa: E731
    missed = sum(1 for b, s in settle.items() if b not in result["detected"] and s < stop - INTERVAL - 0.5)
    # The steady window: from one interval in until the run stops.
    low, high = started + INTERVAL, stop
    in_window = [(t, k, size) for t, k, size in log if low <= t < high]
    intervals = (high - low) / INTERVAL
    lists = sum(1 for _, k, _ in in_window if k == "list")
    gets = sum(1 for _, k, _ in in_window if k == "get")
    size = sum(s for _, _, s in in_window)
    list_size = sum(s for _, k, s in in_window if k == "list")
    samples = result["samples"]
    cpu = [c for t, c, _ in samples if low - started <= t]
    cpu_seconds = (cpu[-1] - cpu[0]) if len(cpu) > 1 else 0.0
    rss = [r for t, _, r in samples if t >= 2.0]
    rss_per_wait = (rss[0] - result["rss_before"]) / n if rss else 0.0
    fmt = lambda v: (">" if v[1] else "") + f"{v[0]:.2f} s"  # noqa: E731
    return {
        "name": name,
        "kind": kind,
        "detected": f"{len(settle) - sum(1 for _, c in latencies if c):,} of {len(settle):,}",
        "missed": missed,
        "p50": fmt(p(0.5)),
        "p99": fmt(p(0.99)),
        "p99_ok": (not p(0.99)[1]) and p(0.99)[0] <= INTERVAL + 0.5,
        "requests_per_interval": (lists + gets) / intervals,
        "lists_per_interval": lists / intervals,
        "gets_per_interval": gets / intervals,
        "bytes_per_wait_interval": size / intervals / n,
        "list_bytes_per_wait_interval": list_size / intervals / n,
        "cpu_per_wait_interval_ms": 1000 * cpu_seconds / intervals / n,
        "rss_per_wait_kb": rss_per_wait / 1024,
        "lag_p99": result["lag_p99"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario")
    parser.add_argument("--url")
    parser.add_argument("--cap", type=float, default=50.0)
    parser.add_argument("--serve")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    if args.scenario:
        batches = json.loads(sys.stdin.read())
        print(json.dumps(scenario(args.scenario, args.url, batches, args.cap)))
        return

    import tempfile

    load = os.getloadavg()
    part_a = bytes_and_parse()
    port_file = str(Path(tempfile.mkdtemp(prefix="bench-polling-")) / "port")
    server = subprocess.Popen([sys.executable, __file__, "--serve", port_file])
    try:
        while not Path(port_file).exists() or not Path(port_file).read_text():
            time.sleep(0.1)
        port = int(Path(port_file).read_text())
        scale = 10 if args.quick else 1
        window = (5.0, 40.0)
        cap = 47.0
        settling = SETTLING // scale
        rows = [
            run_scenario("1,000 waits, 1 agent", "get", port, 1000 // scale, 1, settling, window, 30.0),
            run_scenario("1,000 waits, 1 agent", "list", port, 1000 // scale, 1, settling, window, cap),
            run_scenario("1,000 waits, 100 agents", "list", port, 1000 // scale, 100, settling, window, cap),
            run_scenario("10,000 waits, 100 agents", "list", port, 10000 // scale, 100, settling, window, cap),
        ]
    finally:
        server.terminate()
        server.wait()
    body = report(part_a, rows, load)
    print(body)
    if not args.no_write:
        from _report import write_section

        write_section(
            "polling",
            "Waiting on 5,000-recipient batches: the shared list walk vs a GET per wait",
            ".venv/bin/python benchmarks/bench_polling.py",
            body,
        )


def report(a: dict[str, float], rows: list[dict[str, Any]], load: tuple[float, float, float]) -> str:
    per_wait_list = a["page_bytes"] / 100
    lines = [
        f"Load average when it started: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min; other "
        "helpers' tests ran on the same 2 cores).",
        "",
        "| per wait, per interval | GET of the batch (before) | the agent's list page of 100 batches, per wait (now) | ratio |",
        "| --- | --- | --- | --- |",
        f"| bytes | {a['get_bytes']:,} | {per_wait_list:,.0f} (page: {a['page_bytes']:,}) | "
        f"**{a['get_bytes'] / per_wait_list:,.0f}x** less (target < 2 KB) |",
        f"| parse time | {1000 * a['get_parse']:.1f} ms | {1000 * a['page_parse'] / 100:.3f} ms "
        f"(page: {1000 * a['page_parse']:.2f} ms) | **{a['get_parse'] / (a['page_parse'] / 100):,.0f}x** less |",
        "",
        "Concurrent waits in one event loop: poll interval 5 s, 100 ms per response, batches of 5,000 "
        f"recipients, {SETTLING} of which settle at random times 5-40 s into the run (the others keep "
        "waiting; every settled batch costs one confirmation GET of 844 KB). Requests, bytes and CPU are counted from one interval in until the "
        "run stops; a GET is either the per-batch poll (before) or the confirmation when a batch settles (now).",
        "",
        "| scenario | path | detected | missed | detection p50 / p99 (target ≤ 5.5 s) | requests per interval "
        "(list + GET) | bytes per wait per interval: polling (all, KB) | CPU per wait per interval | RSS per waiting trigger | loop lag p99 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        path = "GET per wait (before)" if r["kind"] == "get" else "shared list walk (now)"
        lines.append(
            f"| {r['name']} | {path} | {r['detected']} | {r['missed']} | {r['p50']} / {r['p99']} "
            f"| {r['requests_per_interval']:,.1f} ({r['lists_per_interval']:,.1f} + {r['gets_per_interval']:,.1f}) "
            f"| {r['list_bytes_per_wait_interval'] if r['kind'] == 'list' else r['bytes_per_wait_interval']:,.0f} "
            f"({r['bytes_per_wait_interval'] / 1024:,.1f}) | {r['cpu_per_wait_interval_ms']:.3f} ms "
            f"| {r['rss_per_wait_kb']:,.1f} KB | {r['lag_p99']:.2f} s |"
        )
    before = next(r for r in rows if r["kind"] == "get")
    now = next(r for r in rows if r["kind"] == "list")
    lines += [
        "",
        f"1,000 waits on one agent: {before['requests_per_interval']:,.1f} → {now['requests_per_interval']:,.1f} "
        f"requests per interval; {before['bytes_per_wait_interval'] / max(now['list_bytes_per_wait_interval'], 1):,.0f}x "
        "fewer bytes per waiting wait (the polling column: list pages only; in brackets, everything including the "
        "one GET that confirms each batch as it settles, which dominates while batches settle and costs the "
        "same CPU per batch as one poll did before). The list requests are one page per agent per round (100 batches a page); the GETs "
        "are the confirmations of batches that settled in that interval. The 1,000-wait run over 100 agents shows "
        "the cost when little can be shared: 100 small pages per interval.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
