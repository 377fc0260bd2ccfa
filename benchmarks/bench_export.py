"""Export benchmark: 5,000-recipient call batches into SQLite and PostgreSQL (issue 4).

Run: ``.venv/bin/python benchmarks/bench_export.py``. Writes the "export" section of docs/benchmarks.md.

The simulator runs in a process of its own, seeded with one 5,000-recipient batch and 100 more
updated inside one hour (the scheduled window). Every scenario runs in a fresh child process, so
its peak RSS (``ru_maxrss``) is its own:

1. **Write phase**, the same 5,000 rows (built once by ``rows.batch_rows``) written by (a)
   ``DbApiHook.insert_rows`` with its defaults, (b) the engine's raw bulk path written by hand
   (psycopg 3 ``COPY``; SQLite ``executemany`` in one transaction), and ours
   (``WarehouseWriter``: connect, check the table, delete + bulk insert, commit). Each into an
   emptied table, connection set-up included for all three; ours also as a re-export that
   replaces 5,000 existing rows.
2. **End to end, one batch**: ``CallBatchToWarehouseOperator.execute`` against the best
   hand-written pipeline (one ``requests.get``, ``json.loads``, rows, then (b)).
3. **Scheduled export of 100 batches** (``execute`` over the window), and its peak RSS against a
   child that exports one batch.

PostgreSQL is the local server (``CARTESIA_TEST_POSTGRES``); when it is not reachable its rows say so.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

RECIPIENTS = 5000
SCHEDULED_BATCHES = 100
WRITE_RUNS = 7
E2E_RUNS = 7
POSTGRES_URI = os.environ.get("CARTESIA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
CLOCK_START = datetime(2026, 6, 1, 6, 0, tzinfo=timezone.utc)
WINDOW = (datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc), datetime(2026, 6, 1, 11, 0, tzinfo=timezone.utc))
ENGINES = ("sqlite", "postgres")
COMMAND = ".venv/bin/python benchmarks/bench_export.py"


# -- the simulator process --------------------------------------------------------------------


def recipients() -> list[dict[str, Any]]:
    """5,000 recipients with realistic metadata (the body is about 2.5 MB)."""
    return [
        {
            "to_number": f"+1415{5_550_000 + i:07d}",
            "metadata": {
                "customer_id": f"cust_{i:06d}",
                "name": f"Zoë O'Brien-{i}",
                "segment": "renewal-2026",
                "account": {
                    "tier": "gold",
                    "balance_cents": 123_456 + i,
                    "tags": ["vip", "auto-pay", "spanish"],
                    "notes": 'Prefers calls after 5pm; mention the loyalty discount "LOYAL10".',
                },
            },
        }
        for i in range(RECIPIENTS)
    ]


def serve() -> None:
    """Child: seed the simulator, print what the parent needs as one JSON line, serve until stdin closes."""
    from airflow_provider_cartesia.testing import CartesiaSimulator, SimClock

    people = recipients()
    sim = CartesiaSimulator(clock=SimClock(start=CLOCK_START), seed=4).start()
    single = sim.seed_batch(name="single", recipients=people, created_at=WINDOW[0] - timedelta(hours=3))
    for i in range(SCHEDULED_BATCHES):
        sim.seed_batch(
            name=f"scheduled {i}",
            recipients=people,
            created_at=WINDOW[0] + timedelta(seconds=20 * i),
            dispatch_interval=0.01,
        )
    sim.clock.advance_to(WINDOW[1] + timedelta(minutes=30))
    print(json.dumps({"url": sim.url, "api_key": sim.api_key, "single": single}), flush=True)
    sys.stdin.read()
    sim.stop()


# -- scenarios (each in its own child process) -------------------------------------------------


def _median(times: list[float]) -> float:
    return statistics.median(times)


def _table(scenario: str) -> str:
    return f"bench_{scenario.replace('-', '_')}_{uuid.uuid4().hex[:8]}"


def _drop(engine: str, table: str) -> None:
    if engine == "postgres":
        import psycopg

        with psycopg.connect(POSTGRES_URI) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def _empty(hook: Any, table: str) -> None:
    conn = hook.get_conn()
    try:
        conn.cursor().execute(f"DELETE FROM {table}")
        conn.commit()
    finally:
        conn.close()


def _count(hook: Any, table: str) -> int:
    return int(hook.get_first(f"SELECT COUNT(*) FROM {table}")[0])


def raw_bulk(hook: Any, table: Any, rows: list[tuple[Any, ...]]) -> None:
    """(b): the engine's bulk path by hand, on a new connection, one transaction."""
    conn = hook.get_conn()
    try:
        cur = conn.cursor()
        if type(conn).__module__.split(".")[0] == "psycopg":
            with cur.copy(table.insert_sql("copy")) as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            cur.executemany(table.insert_sql(), rows)
        conn.commit()
    finally:
        conn.close()


def scenario_write(engine: str, single: str) -> dict[str, Any]:
    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
    from airflow_provider_cartesia.rows import batch_rows, export_columns
    from airflow_provider_cartesia.warehouse import WarehouseTable, WarehouseWriter, get_warehouse_hook

    hook = get_warehouse_hook(f"bench_{engine}")
    columns = export_columns()
    names = [c.name for c in columns]
    tables = {m: _table(f"write_{m}") for m in ("a", "b", "ours")}
    batch = CartesiaHook().get_call_batch(single)
    try:
        for name in tables.values():
            with WarehouseWriter(hook, name, columns) as writer:
                writer.ensure_table()
        adapt = WarehouseTable(hook, tables["ours"], columns).engine.adapt_time
        rows = list(batch_rows(batch, exported_at=datetime.now(timezone.utc), adapt_time=adapt))

        def ours(table: str) -> None:
            with WarehouseWriter(hook, table, columns) as writer:
                writer.ensure_table()
                writer.replace_batch(batch.id, rows)

        methods: dict[str, Callable[[], None]] = {
            "a": lambda: hook.insert_rows(tables["a"], rows, target_fields=names),
            "b": lambda: raw_bulk(hook, WarehouseTable(hook, tables["b"], columns), rows),
            "ours": lambda: ours(tables["ours"]),
        }
        times: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(WRITE_RUNS):
            for method, run in methods.items():  # interleaved, so that machine noise hits all alike
                _empty(hook, tables[method])
                started = time.perf_counter()
                run()
                times[method].append(time.perf_counter() - started)
                assert _count(hook, tables[method]) == RECIPIENTS, method
        times["ours_replace"] = []
        for _ in range(WRITE_RUNS):  # the table holds the batch: a re-export replaces 5,000 rows
            started = time.perf_counter()
            ours(tables["ours"])
            times["ours_replace"].append(time.perf_counter() - started)
        assert _count(hook, tables["ours"]) == RECIPIENTS
        return {"median": {m: _median(t) for m, t in times.items()}, "rows": RECIPIENTS}
    finally:
        for name in tables.values():
            _drop(engine, name)


def hand_written(engine: str, url: str, api_key: str, single: str, hook: Any, table: Any) -> dict[str, float]:
    """The best hand-written pipeline: one GET, json.loads, row tuples, then (b)."""
    import requests

    started = time.perf_counter()
    response = requests.get(
        f"{url}/agents/calls/batches/{single}",
        headers={"Authorization": f"Bearer {api_key}", "Cartesia-Version": "2026-03-01"},
        timeout=60,
    )
    response.raise_for_status()
    got = time.perf_counter()
    body = json.loads(response.content)
    parsed = time.perf_counter()
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    now = datetime.now(timezone.utc).isoformat()
    rows = [
        (
            body["id"],
            r["id"],
            body.get("name"),
            body.get("agent_id"),
            body.get("status"),
            r.get("to_number"),
            r.get("status"),
            r.get("end_reason"),
            r.get("error_message"),
            r.get("agent_call_id"),
            r.get("created_at"),
            None if r.get("metadata") is None else dumps(r["metadata"]),
            now,
        )
        for r in body["recipients"]
    ]
    built = time.perf_counter()
    raw_bulk(hook, table, rows)
    done = time.perf_counter()
    return {"total": done - started, "get": got - started, "parse": parsed - got, "rows": built - parsed}


def scenario_e2e(engine: str, url: str, api_key: str, single: str) -> dict[str, Any]:
    from airflow_provider_cartesia.rows import export_columns
    from airflow_provider_cartesia.transfers.call_batch_to_warehouse import CallBatchToWarehouseOperator
    from airflow_provider_cartesia.warehouse import WarehouseTable, WarehouseWriter, get_warehouse_hook

    hook = get_warehouse_hook(f"bench_{engine}")
    columns = export_columns()
    ours_table, hand_table = _table("e2e_ours"), _table("e2e_hand")
    try:
        for name in (ours_table, hand_table):
            with WarehouseWriter(hook, name, columns) as writer:
                writer.ensure_table()
        table = WarehouseTable(hook, hand_table, columns)

        def ours() -> float:
            op = CallBatchToWarehouseOperator(
                task_id="bench", warehouse_conn_id=f"bench_{engine}", table=ours_table, batch_id=single
            )
            started = time.perf_counter()
            op.execute({})  # type: ignore[arg-type]
            return time.perf_counter() - started

        def hand(gc_paused: bool = False) -> dict[str, float]:
            if not gc_paused:
                return hand_written(engine, url, api_key, single, hook, table)
            gc.disable()
            try:
                return hand_written(engine, url, api_key, single, hook, table)
            finally:
                gc.enable()

        ours(), hand()  # warm-up: imports, first connections
        ours_times: list[float] = []
        hand_runs: list[dict[str, float]] = []
        hand_paused: list[float] = []
        for _ in range(E2E_RUNS):  # interleaved, so that machine noise hits all alike
            _empty(hook, ours_table)
            ours_times.append(ours())
            _empty(hook, hand_table)
            hand_runs.append(hand())
            _empty(hook, hand_table)
            hand_paused.append(hand(gc_paused=True)["total"])
        assert _count(hook, ours_table) == RECIPIENTS and _count(hook, hand_table) == RECIPIENTS
        return {
            "ours": _median(ours_times),
            "hand": _median([r["total"] for r in hand_runs]),
            "hand_gc_paused": _median(hand_paused),
            "hand_parts": {k: _median([r[k] for r in hand_runs]) for k in ("get", "parse", "rows")},
        }
    finally:
        _drop(engine, ours_table)
        _drop(engine, hand_table)


def scenario_export(engine: str, single: str | None) -> dict[str, Any]:
    """Ours, once: one batch by id, or (single None) the scheduled window of 100 batches."""
    from airflow_provider_cartesia.transfers.call_batch_to_warehouse import CallBatchToWarehouseOperator

    table = _table("export")
    op = CallBatchToWarehouseOperator(
        task_id="bench", warehouse_conn_id=f"bench_{engine}", table=table, batch_id=single
    )
    context = {} if single else {"data_interval_start": WINDOW[0], "data_interval_end": WINDOW[1]}
    try:
        started = time.perf_counter()
        summary = op.execute(context)  # type: ignore[arg-type]
        return {
            "seconds": time.perf_counter() - started,
            "rows": summary["rows_written"],
            "batches": len(summary["batch_ids"]),
        }
    finally:
        _drop(engine, table)


def child(argv: list[str]) -> None:
    scenario, engine, out = argv[0], argv[1], argv[2]
    url, api_key, single = os.environ["BENCH_URL"], os.environ["BENCH_KEY"], os.environ["BENCH_SINGLE"]
    if scenario == "write":
        result = scenario_write(engine, single)
    elif scenario == "e2e":
        result = scenario_e2e(engine, url, api_key, single)
    elif scenario == "one":
        result = scenario_export(engine, single)
    else:
        result = scenario_export(engine, None)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(json.dumps(result))


# -- the parent -------------------------------------------------------------------------------


def run_child(scenario: str, engine: str, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    out = workdir / f"{scenario}-{engine}.json"
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", scenario, engine, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=workdir,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scenario {scenario} on {engine} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    print(f"  {scenario:<9} {engine:<8} done in {time.perf_counter() - started:5.1f} s", flush=True)
    return result


def postgres_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URI, connect_timeout=3):
            return True
    except Exception:
        return False


def verdict(ratio: float, target: float) -> str:
    return f"**{ratio:.2f}x** ({'met' if ratio <= target else 'MISSED'}, target ≤ {target}x)"


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f} rows/s"


def main() -> int:
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="cartesia-bench-export-"))
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(workdir),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW_CONN_CARTESIA_DEFAULT": json.dumps(
                {"conn_type": "cartesia", "host": info["url"], "password": info["api_key"]}
            ),
            "AIRFLOW_CONN_BENCH_SQLITE": json.dumps({"conn_type": "sqlite", "host": str(workdir / "warehouse.db")}),
            "AIRFLOW_CONN_BENCH_POSTGRES": json.dumps(
                {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": "test"}
            ),
            "BENCH_URL": info["url"],
            "BENCH_KEY": info["api_key"],
            "BENCH_SINGLE": info["single"],
        }
        engines = [e for e in ENGINES if e != "postgres" or postgres_reachable()]
        results: dict[str, dict[str, Any]] = {}
        for engine in engines:
            results[engine] = {s: run_child(s, engine, env, workdir) for s in ("write", "e2e", "one", "scheduled")}
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=30)
    body = report(results, engines)
    print(body)
    write_section("export", "Export: 5,000-recipient batches into SQLite and PostgreSQL", COMMAND, body)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def report(results: dict[str, dict[str, Any]], engines: list[str]) -> str:
    lines = [
        f"One batch of {RECIPIENTS:,} recipients (body about 2.5 MB) and a scheduled export of "
        f"{SCHEDULED_BATCHES} such batches, from the simulator in its own process over loopback. Each "
        "scenario runs in a fresh process; times are medians "
        f"({WRITE_RUNS} runs for the write phase, {E2E_RUNS} for end to end, after a warm-up).",
        "",
        "| engine | measure | (a) `insert_rows` defaults | (b) raw bulk path | ours | ours vs (b) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for engine in engines:
        w = results[engine]["write"]["median"]
        path = "COPY" if engine == "postgres" else "executemany, one transaction"
        lines.append(
            f"| {engine} | write 5,000 rows | {w['a'] * 1000:.0f} ms ({rate(RECIPIENTS, w['a'])}) | "
            f"{w['b'] * 1000:.0f} ms ({path}; {rate(RECIPIENTS, w['b'])}) | "
            f"{w['ours'] * 1000:.0f} ms ({rate(RECIPIENTS, w['ours'])}) | {verdict(w['ours'] / w['b'], 1.5)} |"
        )
        lines.append(
            f"| {engine} | re-export (replace 5,000 rows) | | | {w['ours_replace'] * 1000:.0f} ms "
            f"({rate(RECIPIENTS, w['ours_replace'])}) | {w['ours_replace'] / w['b']:.2f}x |"
        )
    lines += [
        "",
        "| engine | end to end, one batch | hand-written: GET + `json.loads` + rows + (b) | ours: `execute()` | ratio "
        "| hand-written, cyclic GC paused | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for engine in engines:
        e = results[engine]["e2e"]
        parts = e["hand_parts"]
        lines.append(
            f"| {engine} | fetch, parse, write | {e['hand'] * 1000:.0f} ms (GET {parts['get'] * 1000:.0f}, "
            f"loads {parts['parse'] * 1000:.0f}, rows {parts['rows'] * 1000:.0f}) | {e['ours'] * 1000:.0f} ms | "
            f"{verdict(e['ours'] / e['hand'], 1.5)} | {e['hand_gc_paused'] * 1000:.0f} ms | "
            f"{e['ours'] / e['hand_gc_paused']:.2f}x |"
        )
    lines += [
        "",
        "| engine | ours, one process per run | one batch | scheduled: 100 batches | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for engine in engines:
        one, many = results[engine]["one"], results[engine]["scheduled"]
        lines.append(
            f"| {engine} | time ({many['batches']} batches, {many['rows']:,} rows) | {one['seconds']:.2f} s | "
            f"{many['seconds']:.1f} s ({rate(many['rows'], many['seconds'])}) | |"
        )
        lines.append(
            f"| {engine} | peak RSS | {one['peak_rss_mb']:.0f} MB | {many['peak_rss_mb']:.0f} MB | "
            f"{verdict(many['peak_rss_mb'] / one['peak_rss_mb'], 1.2)} |"
        )
    if "postgres" not in engines:
        lines += ["", "PostgreSQL was not reachable: its rows were not measured."]
    lines += [
        "",
        "(a) commits every 1,000 rows (a failure leaves a partial batch) and, on SQLite, inserts row by row; "
        "(b) and ours write the batch in one transaction. Ours includes what (b) leaves out: connecting, "
        "checking the table's columns and deleting the batch's previous rows. End to end, ours also parses "
        "every field into typed models (datetimes included) where the hand-written pipeline passes the "
        "API's strings through. Neither pipeline pauses Python's cyclic garbage collector (library code does "
        "not change the process); the last columns show what pausing it around the hand-written pipeline "
        "would save.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve()
    elif sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        sys.exit(main())
