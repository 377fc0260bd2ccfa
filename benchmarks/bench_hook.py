"""Hook costs: import time over ``import airflow``, and parsing a 5,000-recipient batch.

Run: ``.venv/bin/python benchmarks/bench_hook.py``. Writes the "hook" section of docs/benchmarks.md.

1. Import: fresh interpreters alternate between ``import airflow`` and ``import airflow; import
   <hook module>``; the difference of the medians is what our module adds to DAG parsing.
2. Parse: one real GET of a 5,000-recipient batch from the simulator; then, side by side on the
   same bytes, ``json.loads`` against the hook's ``parse_model`` (and, for reference, both with the
   cyclic garbage collector paused, which the hook did until issue 13); and end to end,
   ``requests.get`` + ``json.loads`` against ``CartesiaHook.get_call_batch``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

IMPORT_RUNS = 15
PARSE_RUNS = 30
RECIPIENTS = 5000


def _import_seconds(setup: str, measured: str) -> float:
    script = f"import time; {setup}; t = time.perf_counter(); {measured}; print(time.perf_counter() - t)"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()
    )
    return float(out.stdout.strip().splitlines()[-1])


def bench_import() -> tuple[float, float]:
    """Median time of ``import airflow`` alone, and of importing the hook module right after it."""
    base, ours = [], []
    for _ in range(IMPORT_RUNS):
        base.append(_import_seconds("pass", "import airflow"))
        ours.append(_import_seconds("import airflow", "import airflow_provider_cartesia.hooks.cartesia"))
    return statistics.median(base), statistics.median(ours)


def _best(fn: Callable[[], object], runs: int = PARSE_RUNS) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_parse() -> dict[str, float]:
    import requests

    from airflow_provider_cartesia.api import parse_model
    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
    from airflow_provider_cartesia.models import CallBatch
    from airflow_provider_cartesia.testing import CartesiaSimulator

    recipients = [
        {"to_number": f"+1415555{i:04d}", "metadata": {"customer_id": f"cus_{i}", "plan": "pro", "attempt": 1}}
        for i in range(RECIPIENTS)
    ]
    with CartesiaSimulator() as sim:
        batch_id = sim.seed_batch(recipients=recipients, dispatch_interval=0.1)
        sim.clock.advance(100_000)
        os.environ["AIRFLOW_CONN_CARTESIA_BENCH"] = json.dumps(
            {"conn_type": "cartesia", "host": sim.url, "password": sim.api_key}
        )
        url = f"{sim.url}/agents/calls/batches/{batch_id}"
        headers = {"Authorization": f"Bearer {sim.api_key}", "Cartesia-Version": "2026-03-01"}
        session = requests.Session()
        body = session.get(url, headers=headers, timeout=60).content
        hook = CartesiaHook("cartesia_bench")
        hook.get_call_batch(batch_id)  # warm the connection and the model
        assert len(CallBatch.model_validate_json(body).recipients or []) == RECIPIENTS
        return {
            "bytes": float(len(body)),
            "json_loads": _best(lambda: json.loads(body)),
            "model_validate_json": _best(lambda: CallBatch.model_validate_json(body)),
            "parse_model": _best(lambda: parse_model(CallBatch, body, "GET", "/bench")),
            "json_loads_gc_paused": _best(lambda: _gc_paused(json.loads, body)),
            "parse_model_gc_paused": _best(
                lambda: _gc_paused(lambda b: parse_model(CallBatch, b, "GET", "/bench"), body)
            ),
            "requests_json": _best(lambda: session.get(url, headers=headers, timeout=60).json(), 10),
            "hook_get_call_batch": _best(lambda: hook.get_call_batch(batch_id), 10),
        }


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _gc_paused(fn: Callable[[bytes], object], body: bytes) -> object:
    with _collector_paused():
        return fn(body)


def main() -> None:
    base, ours = bench_import()
    added_ms = 1000 * ours
    p = bench_parse()
    parse_ratio = p["parse_model"] / p["json_loads"]
    raw_ratio = p["model_validate_json"] / p["json_loads"]
    paused_ratio = p["parse_model_gc_paused"] / p["json_loads_gc_paused"]
    e2e_ratio = p["hook_get_call_batch"] / p["requests_json"]
    body = f"""
| measure | baseline | ours | ratio |
| --- | --- | --- | --- |
| import (median of {IMPORT_RUNS} fresh interpreters) | `import airflow`: {1000 * base:.0f} ms | then the hook module: {added_ms:.1f} ms | adds **{added_ms:.1f} ms** (target < 30 ms) |
| parse a {RECIPIENTS:,}-recipient batch ({p["bytes"] / 1e6:.1f} MB, median of {PARSE_RUNS}) | `json.loads`: {1000 * p["json_loads"]:.1f} ms | the hook's parse (`parse_model`): {1000 * p["parse_model"]:.1f} ms | **{parse_ratio:.2f}x** (target within 2x) |
| the same, the model alone | `json.loads`: {1000 * p["json_loads"]:.1f} ms | `CallBatch.model_validate_json`: {1000 * p["model_validate_json"]:.1f} ms | {raw_ratio:.2f}x |
| for reference, both with the cyclic GC paused (the hook did this until issue 13) | `json.loads`: {1000 * p["json_loads_gc_paused"]:.1f} ms | `parse_model`: {1000 * p["parse_model_gc_paused"]:.1f} ms | {paused_ratio:.2f}x |
| GET + parse, end to end over loopback (median of 10) | `requests` + `.json()`: {1000 * p["requests_json"]:.1f} ms | `CartesiaHook.get_call_batch`: {1000 * p["hook_get_call_batch"]:.1f} ms | {e2e_ratio:.2f}x |

The import row times `import airflow_provider_cartesia.hooks.cartesia` in a fresh interpreter right
after `import airflow`, so it counts exactly what our module adds to DAG parsing. The hook no longer
pauses Python's cyclic garbage collector while it parses (library code does not change the process):
in a process that imported Airflow, the tens of thousands of objects of a large batch set off
collections that scan the whole heap and free nothing, which is the gap between the parse rows.
The model keeps every field typed (datetimes parsed, unknown fields kept), which plain `json.loads` does not.
"""
    print(body)
    write_section(
        "hook",
        "Hook: import cost and parsing a 5,000-recipient batch",
        "make bench  # or .venv/bin/python benchmarks/bench_hook.py",
        body,
    )


if __name__ == "__main__":
    main()
