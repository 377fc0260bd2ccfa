"""`make demo`: a calling campaign, end to end, on your machine, in well under a minute.

1. Seeds a SQLite warehouse (``.demo/warehouse.db``) with a few hundred campaign contacts.
2. Starts the bundled Cartesia simulator (a subprocess, 127.0.0.1 only) on a clock running 20 times
   faster than real time, so the campaign's calls finish over about 20 seconds.
3. Runs the example DAG ``cartesia_campaign`` with ``airflow dags test`` in a private AIRFLOW_HOME
   (``.demo/airflow-home``): it creates the batch from the contacts, defers until every call has
   ended (``airflow dags test`` runs the trigger inline), exports the outcomes to the warehouse and
   reports the counts.
4. Prints an outcome table, the one command to query the rows, and how to watch a batch from the
   terminal (``python -m airflow_provider_cartesia batches watch``) and test your own DAG.

A failure or Ctrl-C stops the simulator and Airflow (nothing is left running) and says what went
wrong; the full Airflow output is in ``.demo/dags-test.log``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import IO

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / ".demo"
AIRFLOW_HOME = DEMO / "airflow-home"
WAREHOUSE = DEMO / "warehouse.db"
DAGS_TEST_LOG = DEMO / "dags-test.log"
SIMULATOR_LOG = DEMO / "simulator.log"
AIRFLOW = Path(sys.executable).with_name("airflow")

DAG_ID = "cartesia_campaign"
TABLE = "cartesia_call_batch_recipients"
CONTACTS = 300
DO_NOT_CALL = sum(1 for i in range(CONTACTS) if i % 25 == 7)
SPEED = 20  # simulated seconds per real second: ~400 simulated seconds of calls in ~20 s
RUN_TIMEOUT = 150


class DemoError(Exception):
    """A step failed; the message says which and what to look at."""


def say(message: str = "") -> None:
    print(message, flush=True)


# -- child processes ---------------------------------------------------------------------------


class Children:
    """The demo's subprocesses, each in a process group of its own; :meth:`stop` ends every group."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, args: Sequence[str], env: dict[str, str], stdout: IO[bytes] | int
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            list(args),
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def stop(self) -> tuple[list[str], list[str]]:
        """SIGTERM every group, SIGKILL what is still there after 10 s.

        Returns the names of the children that were still running, and of those whose process group
        still has a process afterwards (none, unless something could not be killed).
        """
        stopped = []
        for name, proc in self.procs:
            if proc.poll() is None:
                stopped.append(name)
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in self.procs:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)  # the group's other processes, if any, too
            proc.wait()
        time.sleep(0.1)
        left = [f"{name} (process group {proc.pid})" for name, proc in self.procs if _group_alive(proc.pid)]
        return stopped, left


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# -- steps -------------------------------------------------------------------------------------


def airflow_env(sim_url: str, api_key: str) -> dict[str, str]:
    """A private Airflow: its own home and SQLite metadata DB, the example DAGs, the two connections."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__"))}
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "example_dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "AIRFLOW_CONN_CARTESIA_DEFAULT": json.dumps(
                {"conn_type": "cartesia", "host": sim_url, "password": api_key}
            ),
            "AIRFLOW_CONN_CARTESIA_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(WAREHOUSE)}),
            "CARTESIA_POKE_INTERVAL": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def prepare_airflow_home(env: dict[str, str]) -> None:
    """``airflow db migrate`` once per Airflow version (about 6 s); later runs reuse the database."""
    import airflow

    stamp = AIRFLOW_HOME / ".migrated"
    if stamp.exists() and stamp.read_text() == airflow.__version__:
        return
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)
    AIRFLOW_HOME.mkdir(parents=True)
    say(f"Creating the demo's Airflow metadata database (Airflow {airflow.__version__}, first run only)")
    done = subprocess.run(
        [str(AIRFLOW), "db", "migrate"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise DemoError(f"`airflow db migrate` failed (exit {done.returncode}):\n{_tail(done.stdout + done.stderr)}")
    stamp.write_text(airflow.__version__)


def seed_contacts() -> None:
    """A fresh warehouse holding ``campaign_contacts``, the table the example DAG's query reads."""
    WAREHOUSE.unlink(missing_ok=True)
    plans = ("basic", "plus", "pro")
    with sqlite3.connect(WAREHOUSE) as conn:
        conn.execute("CREATE TABLE campaign_contacts (customer_id TEXT, phone TEXT, plan TEXT, do_not_call INTEGER)")
        conn.executemany(
            "INSERT INTO campaign_contacts VALUES (?, ?, ?, ?)",
            [(f"cust_{i:05d}", f"+1415555{i:04d}", plans[i % 3], int(i % 25 == 7)) for i in range(CONTACTS)],
        )
    conn.close()


def start_simulator(children: Children, api_key: str) -> str:
    """The simulator CLI on an ephemeral loopback port; returns its URL (read from its output)."""
    env = {**os.environ, "CARTESIA_SIMULATOR_API_KEY": api_key, "PYTHONUNBUFFERED": "1"}
    args = [
        sys.executable,
        "-m",
        "airflow_provider_cartesia.testing",
        "--port",
        "0",
        "--speed",
        str(SPEED),
        "--seed",
        "7",
    ]
    with SIMULATOR_LOG.open("wb") as log:
        proc = children.start("the Cartesia simulator", args, env, log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        match = re.search(r"^URL: (http://127\.0\.0\.1:\d+)$", SIMULATOR_LOG.read_text(), re.M)
        if match:
            return match.group(1)
        if proc.poll() is not None:
            raise DemoError(
                f"the simulator exited at start (exit {proc.returncode}):\n{_tail(SIMULATOR_LOG.read_text())}"
            )
        time.sleep(0.05)
    raise DemoError(f"the simulator did not start within 15 s; see {SIMULATOR_LOG}")


# What of `airflow dags test`'s output the demo shows: task boundaries and the batch's progress.
_TASK = re.compile(r"\[DAG TEST\] (starting|end task) task_id=(\w+)")
_PROGRESS = re.compile(r"(acb_\w+ \w+: [\d,]+ of [\d,]+ calls finished \([\d.]+%\), [\d,]+ dispatched)")
_RUN_FINISHED = re.compile(r"DagRun Finished: dag_id=\w+, .*?\bstate=(\w+)")
_DEFERRED = re.compile(r"Pausing task as DEFERRED")


def _read_lines(proc: subprocess.Popen[bytes], lines: queue.Queue[bytes | None]) -> None:
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        lines.put(raw)
    lines.put(None)


def run_campaign(children: Children, env: dict[str, str]) -> None:
    """``airflow dags test cartesia_campaign``; shows its progress, keeps the full output in a log."""
    conf = {"agent_id": "agent_demo", "from_number_id": "pn_demo", "campaign_name": "Demo renewal reminders"}
    args = [str(AIRFLOW), "dags", "test", DAG_ID, "--conf", json.dumps(conf)]
    say(f"$ airflow dags test {DAG_ID} --conf '{json.dumps(conf)}'")
    proc = children.start("airflow dags test", args, env, subprocess.PIPE)
    lines: queue.Queue[bytes | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc, lines), daemon=True).start()
    deadline = time.monotonic() + RUN_TIMEOUT
    last_progress = 0.0
    with DAGS_TEST_LOG.open("wb") as log:
        while True:
            if time.monotonic() > deadline:
                raise DemoError(f"the DAG run took more than {RUN_TIMEOUT} s; see {DAGS_TEST_LOG}")
            try:
                raw = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if raw is None:  # end of output
                break
            log.write(raw)
            line = raw.decode(errors="replace")
            if (task := _TASK.search(line)) is not None:
                say(f"  {'started' if task.group(1) == 'starting' else 'ended  '} {task.group(2)}")
            elif _DEFERRED.search(line):
                say("  deferred: the wait runs in the trigger (inline under `airflow dags test`)")
            elif (progress := _PROGRESS.search(line)) is not None and time.monotonic() - last_progress >= 2:
                last_progress = time.monotonic()
                say(f"    {progress.group(1)}")
    proc.wait()
    if proc.returncode != 0:
        raise DemoError(f"`airflow dags test` exited with {proc.returncode}:\n{_errors(DAGS_TEST_LOG)}")
    finished = _RUN_FINISHED.search(DAGS_TEST_LOG.read_text(errors="replace"))
    if finished is None or finished.group(1) != "success":
        state = finished.group(1) if finished else "unknown"
        raise DemoError(f"the DAG run ended {state}:\n{_errors(DAGS_TEST_LOG)}")


def print_outcomes() -> None:
    """Counts by status and end reason, with the mean call duration, from the warehouse."""
    with sqlite3.connect(WAREHOUSE) as conn:
        batches = conn.execute(f"SELECT DISTINCT batch_id FROM {TABLE}").fetchall()  # noqa: S608
        rows = conn.execute(
            f"""SELECT status, COALESCE(end_reason, CASE WHEN error_message IS NOT NULL THEN 'not dialed' END, '-'),
                       COUNT(*), AVG(CASE WHEN call_status = 'completed' THEN call_duration_seconds END)
                FROM {TABLE} GROUP BY 1, 2 ORDER BY 3 DESC"""  # noqa: S608
        ).fetchall()
        total, answered, mean = conn.execute(
            f"""SELECT COUNT(*), COUNT(CASE WHEN call_status = 'completed' THEN 1 END),
                       AVG(CASE WHEN call_status = 'completed' THEN call_duration_seconds END) FROM {TABLE}"""  # noqa: S608
        ).fetchone()
    conn.close()
    if not total:
        raise DemoError(f"the run succeeded but {WAREHOUSE} holds no exported row")
    say()
    say(f"Outcomes of {', '.join(b for (b,) in batches)}: {total:,} recipients")
    say()
    say(f"  {'status':<10} {'end reason':<16} {'recipients':>10} {'share':>7} {'mean call':>10}")
    for status, reason, count, duration in rows:
        shown = f"{duration:.1f} s" if duration is not None else "-"
        say(f"  {status or '-':<10} {reason:<16} {count:>10,} {count / total:>7.1%} {shown:>10}")
    say()
    say(f"  {answered:,} calls answered and completed; mean call duration {mean or 0:.1f} s")


def query_command() -> str:
    """The one command to look at the rows: sqlite3 when installed, else this venv's Python."""
    sql = f"SELECT recipient_id, status, end_reason, call_duration_seconds FROM {TABLE} LIMIT 20"  # noqa: S608
    here = Path.cwd() == REPO
    path = WAREHOUSE.relative_to(REPO) if here else WAREHOUSE
    if shutil.which("sqlite3"):
        return f'sqlite3 -header -column {path} "{sql}"'
    python = Path(sys.executable).relative_to(REPO) if here else Path(sys.executable)
    return f"{python} -c \"import sqlite3; [print(r) for r in sqlite3.connect('{path}').execute('{sql}')]\""


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def _errors(log: Path) -> str:
    """What failed, from a log: the exceptions raised (a traceback's last line), else its error lines."""
    lines = log.read_text(errors="replace").splitlines()
    raised = [line for line in lines if _EXCEPTION.match(line)]
    errors = [line for line in lines if re.search(r"\[(error|critical) *\]|\b(Traceback|failed)\b", line)]
    shown = list(dict.fromkeys(raised))[-5:] or errors[-15:] or lines[-25:]
    return _tail("\n".join(shown)) + f"\n  Full output: {log}"


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Timeout|Interrupt|Exit)\b: ")


@contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """Ctrl-C, SIGTERM (``make`` being stopped) and SIGHUP (a closed terminal) end the demo cleanly,
    also where the shell started it with SIGINT ignored (a background job)."""
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main() -> int:
    started = time.monotonic()
    DEMO.mkdir(exist_ok=True)
    api_key = f"sk_car_demo_{secrets.token_hex(12)}"  # the simulator's key for this run; never printed
    children = Children()
    outcome = 0
    with interrupts_as_keyboard_interrupt():
        try:
            seed_contacts()
            say(f"Warehouse: {WAREHOUSE} (campaign_contacts: {CONTACTS} contacts, {DO_NOT_CALL} of them do-not-call)")
            sim_url = start_simulator(children, api_key)
            say(f"Cartesia simulator: {sim_url} (calls run {SPEED}x faster than real time)")
            env = airflow_env(sim_url, api_key)
            prepare_airflow_home(env)
            run_campaign(children, env)
        except KeyboardInterrupt:
            say("\nInterrupted.")
            outcome = 130
        except DemoError as exc:
            say(f"\nThe demo failed: {exc}")
            outcome = 1
        finally:
            stopped, left = children.stop()
            if left:
                say(f"Could not stop {', '.join(left)}: end them with `kill -9 -<pid>`.")
                outcome = outcome or 1
            elif stopped and outcome:
                say(f"Stopped {' and '.join(stopped)}; nothing is left running.")
    if outcome:
        return outcome
    try:
        print_outcomes()
    except DemoError as exc:
        say(f"\nThe demo failed: {exc}")
        return 1
    say()
    say(f"Rows: {WAREHOUSE}, table {TABLE}. Query them:")
    say(f"  {query_command()}")
    say()
    for line in next_steps():
        say(line)
    say()
    say(f"Done in {time.monotonic() - started:.0f} s. Full Airflow output: {DAGS_TEST_LOG.relative_to(REPO)}")
    return 0


def next_steps() -> list[str]:
    """Where to go from here: watching a batch live, and testing your own DAG."""
    python = Path(sys.executable).relative_to(REPO) if Path.cwd() == REPO else Path(sys.executable)
    return [
        "Watch a batch live: start a simulator with a slow batch, paste the export line it prints, then watch:",
        f"  {python} -m airflow_provider_cartesia.testing --scenario slow",
        f"  {python} -m airflow_provider_cartesia batches watch <the batch id it printed>",
        f"  ({python} -m airflow_provider_cartesia batches list / get <id> also work on your real connection)",
        "Test your own DAG against the simulator: docs/testing.md; what it assumes: docs/simulator.md",
    ]


if __name__ == "__main__":
    sys.exit(main())
