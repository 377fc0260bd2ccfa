"""Run Airflow as it is deployed, for the end-to-end test: separate services, real processes.

:class:`Processes` starts every process of a run in a process group of its own, tagged with an
environment variable unique to the run (children inherit it: task processes and trigger runners
too, though they start process groups of their own), and stops them all: SIGTERM to every group
and every process of every tree, a grace period, then SIGKILL. :meth:`Processes.survivors` finds any
process still carrying the tag, wherever it was reparented, so a test can prove nothing is left.

:func:`airflow_environment` is what the separate components need to work together
(``../shared/airflow-notes.md`` section 4): one metadata database, the execution API URL of the
api-server, a shared JWT secret, API secret and Fernet key, the simple auth manager's user and
passwords file, and no log server (``--skip-serve-logs``: they bind every interface; the api-server
reads the task and trigger logs from the shared folder instead).

:class:`AirflowApi` is a small client of the REST API (``POST /auth/token``, then bearer tokens).

For the CeleryExecutor: :func:`redis_database` claims a Redis database number of the run's own (and
flushes it after), :func:`celery_settings` points the executor and workers at it and at a result
backend, :func:`worker_hostname` lets each worker report a hostname of its own (they share one
machine), and :meth:`Processes.kill_tree` loses a worker the way a machine is lost: every process of
its tree at once, with SIGKILL. :func:`find_in_database` and :func:`find_in_files` look for a secret
everywhere a run leaves data.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import requests

RUN_TAG_VARIABLE = "CARTESIA_E2E_RUN"
"""Environment variable carrying the run's tag: every process of a run (and its children) has it."""

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    """Call ``probe`` until it returns something other than None (or False); TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
        except (OSError, requests.RequestException, ValueError) as exc:
            result, last_error = None, exc
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            suffix = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{suffix}")
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Service:
    """One started process: its name, Popen handle and the file its stdout and stderr go to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    grace: float
    killed: bool = False
    """Killed on purpose by :meth:`Processes.kill_tree`: :meth:`Processes.check_alive` expects it dead."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        """The service's process and every live descendant (task processes included)."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def describe(self) -> str:
        state = "running" if self.running() else f"exited with {self.popen.returncode}"
        state += " (killed by the test)" if self.killed else ""
        return f"--- {self.name} (pid {self.pid}, {state}), last lines of {self.log_path}:\n{tail(self.log_path)}"


@dataclass
class Processes:
    """Every process of one end-to-end run; stop them all with :meth:`stop_all` (idempotent)."""

    log_dir: Path
    tag: str = field(default_factory=lambda: f"e2e-{secrets.token_hex(8)}")
    services: list[Service] = field(default_factory=list)

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: Path | None = None,
        grace: float = 15.0,
    ) -> Service:
        """Start ``args`` in a new session (its own process group), output to ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(args),
                env={**env, RUN_TAG_VARIABLE: self.tag},
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, popen, log_path, grace)
        self.services.append(service)
        return service

    def describe(self) -> str:
        return "\n".join(s.describe() for s in self.services)

    def check_alive(self) -> None:
        """RuntimeError naming any service that has exited (with its log), so a test fails fast."""
        dead = [s for s in self.services if not s.running() and not s.killed]
        if dead:
            raise RuntimeError("service(s) exited early:\n" + "\n".join(s.describe() for s in dead))

    def owner_of(self, pid: int) -> Service | None:
        """The service whose process tree holds ``pid``, if any."""
        for service in self.services:
            if pid in {proc.pid for proc in service.tree()}:
                return service
        return None

    def kill_tree(self, service: Service, timeout: float = 30.0) -> list[int]:
        """Lose ``service`` like a crashed machine: SIGKILL its whole process tree at once; returns the pids.

        The tree is frozen first (SIGSTOP), so nothing it forks meanwhile escapes, then killed; the call
        returns once every one of those processes is gone.
        """
        frozen: dict[int, psutil.Process] = {}
        while True:
            new = [proc for proc in service.tree() if proc.pid not in frozen]
            if not new:
                break
            for proc in new:
                with contextlib.suppress(psutil.Error):
                    proc.suspend()
                frozen[proc.pid] = proc
        service.killed = True
        for proc in frozen.values():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.popen.wait(timeout=timeout)
        _, alive = psutil.wait_procs(list(frozen.values()), timeout=timeout)
        alive = [p for p in alive if _lives(p)]
        if alive:
            raise RuntimeError(f"processes of {service.name} survived SIGKILL: {[p.pid for p in alive]}")
        return sorted(frozen)

    def _tree(self) -> list[psutil.Process]:
        """Every live process of the run: the services, their descendants, and anything with the tag."""
        found: dict[int, psutil.Process] = {}
        for service in self.services:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(service.pid)
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
        for proc in self.survivors():
            found[proc.pid] = proc
        return list(found.values())

    def stop_all(self) -> None:
        """SIGTERM every group and process of the run; SIGKILL what is left after the longest grace."""
        if not self.services:
            return
        procs = self._tree()
        groups = {s.pid for s in self.services if s.running()}
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGTERM)
        # One SIGTERM each: a second one makes the triggerer and scheduler skip their clean shutdown.
        for proc in procs:
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.pid) not in groups:
                    proc.terminate()
        deadline = time.monotonic() + max(s.grace for s in self.services)
        for service in self.services:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        _, alive = psutil.wait_procs(procs, timeout=max(0.0, deadline - time.monotonic()))
        for service in self.services:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.pid, signal.SIGKILL)
        for proc in [*alive, *self.survivors()]:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        for service in self.services:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.popen.wait(timeout=5)
        psutil.wait_procs(self.survivors(), timeout=5)

    def survivors(self) -> list[psutil.Process]:
        """Live (non-zombie) processes whose environment carries this run's tag."""
        me = os.getpid()
        left = []
        for proc in psutil.process_iter(["pid", "status"]):
            if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            try:
                if proc.environ().get(RUN_TAG_VARIABLE) == self.tag:
                    left.append(proc)
            except psutil.Error:
                continue
        return left


def _lives(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def airflow_environment(
    *,
    airflow_home: Path,
    dags_folder: Path,
    sql_alchemy_conn: str,
    api_port: int,
    passwords_file: Path,
    username: str,
    connections: Mapping[str, str],
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment shared by every Airflow component of the run (and its task processes)."""
    from cryptography.fernet import Fernet

    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW_", "AIRFLOW__", "PYTEST_")) and k not in ("PYTHONPATH",)
    }
    api_url = f"http://127.0.0.1:{api_port}"
    env = {
        **base,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
        "AIRFLOW__API__BASE_URL": api_url,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{username}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        # Log servers are not started (--skip-serve-logs); free ports all the same, in case one is.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        # Notice new DAG runs and triggers quickly; a test waits on every one of these loops.
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "PYTHONUNBUFFERED": "1",
        **{f"AIRFLOW_CONN_{conn_id.upper()}": value for conn_id, value in connections.items()},
    }
    env.update(extra or {})
    return env


def write_passwords_file(path: Path, username: str) -> str:
    """The simple auth manager's passwords file with one user; returns the password."""
    password = secrets.token_urlsafe(16)
    path.write_text(json.dumps({username: password}))
    return password


@dataclass
class AirflowApi:
    """A minimal REST client of the api-server: a JWT from ``POST /auth/token``, then ``/api/v2``."""

    base_url: str
    username: str
    password: str
    timeout: float = 30.0  # one REST call to an api-server sharing a busy machine
    _session: requests.Session = field(default_factory=requests.Session)

    def healthy_components(self) -> set[str]:
        """Components that ``GET /api/v2/monitor/health`` reports healthy (needs no token)."""
        response = self._session.get(f"{self.base_url}/api/v2/monitor/health", timeout=self.timeout)
        response.raise_for_status()
        return {name for name, item in response.json().items() if (item or {}).get("status") == "healthy"}

    def login(self) -> None:
        response = self._session.post(
            f"{self.base_url}/auth/token",
            json={"username": self.username, "password": self.password},
            timeout=self.timeout,
        )
        if response.status_code >= 300:
            raise RuntimeError(f"POST /auth/token answered {response.status_code}: {response.text[:300]}")
        self._session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        response = self._session.request(method, f"{self.base_url}/api/v2{path}", timeout=self.timeout, **kwargs)
        if response.status_code not in ok:
            raise RuntimeError(f"{method} /api/v2{path} answered {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG, once the dag-processor has parsed it; None before."""
        response = self._session.get(f"{self.base_url}/api/v2/dags/{dag_id}", timeout=self.timeout)
        return response.json() if response.status_code == 200 else None

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self.get("/importErrors")["import_errors"])

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        """A manual run of ``dag_id`` with ``conf``; returns its run id."""
        run = self.request("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf)})
        return str(run["dag_run_id"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.get(f"/dags/{dag_id}/dagRuns/{run_id}"))

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        items = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti for ti in items}

    def task_instance_tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """Every try of a task instance (its history, then the current try), oldest first."""
        items = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries")["task_instances"]
        return sorted(items, key=lambda ti: int(ti["try_number"]))

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/dags/{dag_id}/dagRuns")["dag_runs"])

    def asset_events(self) -> list[dict[str, Any]]:
        return list(self.get("/assets/events")["asset_events"])


@contextlib.contextmanager
def postgres_database(server_uri: str, prefix: str = "cartesia_e2e") -> Iterator[str]:
    """A database of its own on the server of ``server_uri``, dropped at the end; yields its name."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(server_uri, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(server_uri, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def sqlalchemy_postgres_scheme() -> str:
    """The SQLAlchemy URL scheme of the installed PostgreSQL driver.

    psycopg 3 needs SQLAlchemy 2 (``postgresql+psycopg``); Airflow 3.0 runs SQLAlchemy 1.4, whose only
    PostgreSQL driver here is psycopg2 (the postgres provider's dependency).
    """
    import importlib.util

    import sqlalchemy

    if int(sqlalchemy.__version__.split(".")[0]) >= 2 and importlib.util.find_spec("psycopg"):
        return "postgresql+psycopg"
    return "postgresql+psycopg2"


def database_uri(server_uri: str, database: str, driver: str | None = None) -> str:
    """``server_uri`` (``postgresql://user@host:port/db``) pointed at ``database``, with ``driver``.

    ``driver`` defaults to the installed one (:func:`sqlalchemy_postgres_scheme`).
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(server_uri)
    return urlunsplit((driver or sqlalchemy_postgres_scheme(), parts.netloc, f"/{database}", parts.query, ""))


def triggerer_job_ids(dsn: str) -> set[int]:
    """Ids of the ``TriggererJob`` rows of the metadata database at ``dsn`` (a libpq URI)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id FROM job WHERE job_type = 'TriggererJob'").fetchall()
    return {int(row[0]) for row in rows}


# -- CeleryExecutor ---------------------------------------------------------------------------------

REDIS_CLAIM_KEY = "cartesia-e2e:claimed-by"
WORKER_HOSTNAME_VARIABLE = "CARTESIA_E2E_HOSTNAME"


@contextlib.contextmanager
def redis_database(server_url: str, numbers: Sequence[int] = tuple(range(8, 16))) -> Iterator[str]:
    """A Redis database number of the run's own, flushed at the end; yields its URL (the broker's).

    A database is claimed with an atomic ``SET NX`` of a marker key, and kept only if it holds
    nothing else, so parallel runs (and anyone else's data) are never shared or flushed.
    """
    import redis

    claim = f"e2e-{secrets.token_hex(8)}"
    base = server_url.rstrip("/")
    for number in numbers:
        client = redis.Redis.from_url(f"{base}/{number}", socket_timeout=10)
        if client.set(REDIS_CLAIM_KEY, claim, nx=True, ex=6 * 3600):
            if client.dbsize() == 1:
                break
            client.delete(REDIS_CLAIM_KEY)  # someone else's data is there: leave it alone
        client.close()
    else:
        raise RuntimeError(f"no empty Redis database among {list(numbers)} on {server_url}; flush a stale one")
    try:
        yield f"{base}/{number}"
    finally:
        client.flushdb()
        client.close()


def celery_settings(
    *, broker_url: str, result_backend: str, concurrency: int = 2, heartbeat_timeout: int = 20
) -> dict[str, str]:
    """Environment of every component for the CeleryExecutor (see docs/deploying.md).

    A worker lost with its task processes sends no more task heartbeats: the scheduler fails the try
    after ``heartbeat_timeout`` seconds (the default is 300) and the task's retries take over.
    """
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
        # Redis redelivers an unacknowledged task after this; longer than any run of the test.
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(heartbeat_timeout),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
    }


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the test's Celery workers: the name in their environment.

    The workers share one machine, so the default (its FQDN) would not tell them apart in a task
    instance's ``hostname``.
    """
    return os.environ.get(WORKER_HOSTNAME_VARIABLE) or socket.getfqdn()


# -- where a secret could have been left ------------------------------------------------------------


def _forms(needle: str) -> tuple[bytes, bytes]:
    """The needle as bytes, and as the hex PostgreSQL prints ``bytea`` in."""
    raw = needle.encode()
    return raw, raw.hex().encode()


def find_in_database(dsn: str, needles: Sequence[str]) -> dict[str, set[str]]:
    """For each needle, the tables of the database at ``dsn`` holding it in some row (every column of
    every row of every table read as text; ``bytea`` values are also searched in hex)."""
    import psycopg
    from psycopg import sql

    found: dict[str, set[str]] = {needle: set() for needle in needles}
    forms = {needle: _forms(needle) for needle in needles}
    with psycopg.connect(dsn) as conn:
        tables = [
            (schema, name)
            for schema, name in conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            ).fetchall()
        ]
        for schema, name in tables:
            query = sql.SQL("SELECT CAST(t AS text) FROM {}.{} AS t").format(
                sql.Identifier(schema), sql.Identifier(name)
            )
            for (text,) in conn.execute(query):
                data = (text or "").encode().lower()
                for needle, (raw, hexed) in forms.items():
                    if raw.lower() in data or hexed in data:
                        found[needle].add(name)
    return found


def find_in_files(root: Path, needles: Sequence[str]) -> tuple[dict[str, set[Path]], int]:
    """For each needle, the files under ``root`` that hold it; and how many files were read."""
    found: dict[str, set[Path]] = {needle: set() for needle in needles}
    read = 0
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        read += 1
        for needle in needles:
            if needle.encode() in data:
                found[needle].add(path)
    return found, read


def libpq_uri(uri: str) -> str:
    """A SQLAlchemy URL (``postgresql+driver://...``) as libpq takes it (``postgresql://...``)."""
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(("postgresql", *urlsplit(uri)[1:]))
