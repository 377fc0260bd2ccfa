"""``python -m airflow_provider_cartesia batches list|get|watch``: call batches for a person at a terminal.

It reads through :class:`~airflow_provider_cartesia.hooks.cartesia.CartesiaHook` and the connection
Airflow already has (``--conn-id``, default ``cartesia_default``; ``AIRFLOW_CONN_*`` variables work),
and decides "settled" with the sensor's own :class:`~airflow_provider_cartesia.waiting.BatchWatch`,
so ``watch`` ends exactly when a ``CallBatchSensor`` with default settings would. Phone numbers are
shown only with ``--show-numbers``; metadata never. rich (installed with Airflow) is imported when a
command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
    from airflow_provider_cartesia.models import CallBatch

PROG = "python -m airflow_provider_cartesia"
DEFAULT_WATCH_INTERVAL = 10.0
DEFAULT_LIST_LIMIT = 20
EXIT_OK, EXIT_BATCH_FAILED, EXIT_ERROR = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look at Cartesia call batches through Airflow's cartesia connection.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--conn-id",
        default="cartesia_default",
        help="Airflow connection of type cartesia (default cartesia_default; AIRFLOW_CONN_<ID> works)",
    )
    commands = parser.add_subparsers(dest="group", required=True, metavar="batches")
    batches = commands.add_parser("batches", help="list, show or watch call batches")
    actions = batches.add_subparsers(dest="action", required=True, metavar="{list,get,watch}")
    listing = actions.add_parser("list", parents=[common], help="the newest batches, with status and counters")
    listing.add_argument("--agent", metavar="ID", help="only this agent's batches")
    listing.add_argument(
        "--limit", type=int, default=DEFAULT_LIST_LIMIT, help=f"how many (default {DEFAULT_LIST_LIMIT})"
    )
    get = actions.add_parser("get", parents=[common], help="one batch: status, counters and its recipients' outcomes")
    get.add_argument("batch_id")
    get.add_argument("--recipients", action="store_true", help="also list every recipient (no numbers)")
    get.add_argument(
        "--show-numbers", action="store_true", help="list every recipient with its phone number (personal data)"
    )
    watch = actions.add_parser(
        "watch",
        parents=[common],
        help="a live progress bar until the batch settles (the sensor's rule); exit 1 if it failed",
    )
    watch.add_argument("batch_id")
    watch.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_WATCH_INTERVAL,
        help=f"seconds between polls (default {DEFAULT_WATCH_INTERVAL:g})",
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    console: Console | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run one command; returns the exit status. ``console`` and ``sleep`` (polls and retry waits) are for tests."""
    from rich.console import Console

    from airflow_provider_cartesia.compat import AirflowNotFoundException
    from airflow_provider_cartesia.exceptions import CartesiaError
    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook

    args = _parser().parse_args(argv)
    out = console if console is not None else Console()
    errors = console if console is not None else Console(stderr=True)
    hook = CartesiaHook(args.conn_id)
    hook._sleep = sleep  # the hook's retry waits follow the same clock as the polls
    try:
        if args.action == "list":
            if args.limit < 1:
                errors.print("error: --limit must be at least 1")
                return EXIT_ERROR
            list_batches(hook, out, agent_id=args.agent, limit=args.limit)
            return EXIT_OK
        if args.action == "get":
            show_batch(
                hook, out, args.batch_id, recipients=args.recipients or args.show_numbers, numbers=args.show_numbers
            )
            return EXIT_OK
        if args.interval <= 0:
            errors.print("error: --interval must be more than 0 seconds")
            return EXIT_ERROR
        return watch_batch(hook, out, args.batch_id, interval=args.interval, sleep=sleep)
    except CartesiaError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False)
        return EXIT_ERROR
    except AirflowNotFoundException:
        errors.print(no_connection_message(args.conn_id), markup=False, highlight=False)
        return EXIT_ERROR


def no_connection_message(conn_id: str) -> str:
    return (
        f"error: Airflow has no connection '{conn_id}'. Set AIRFLOW_CONN_{conn_id.upper()} (JSON form, see "
        f"docs/connection.md) or add it with 'airflow connections add {conn_id} --conn-type cartesia ...', "
        "or pass --conn-id"
    )


def _counters(batch: CallBatch) -> str:
    return (
        f"{batch.total_calls_finished:,} finished / {batch.total_calls_dispatched:,} dispatched / "
        f"{batch.total_calls_scheduled:,} scheduled"
    )


def _when(value: Any, fmt: str = "%Y-%m-%d %H:%M:%SZ") -> str:
    return value.strftime(fmt) if value is not None else "-"


def list_batches(hook: CartesiaHook, out: Console, *, agent_id: str | None, limit: int) -> None:
    """A table of the newest ``limit`` batches (of one agent)."""
    from itertools import islice

    from rich import box
    from rich.table import Table

    table = Table(
        title="Call batches, newest first" + (f" (agent {agent_id})" if agent_id else ""), box=box.SIMPLE_HEAD
    )
    table.add_column("id", no_wrap=True, min_width=28)
    table.add_column("status", no_wrap=True, min_width=11)
    table.add_column("fin/disp/sched", justify="right", no_wrap=True, min_width=14)
    table.add_column("created", no_wrap=True, min_width=11)
    table.add_column("name")
    count = 0
    for batch in islice(hook.list_call_batches(agent_id=agent_id, page_size=min(limit, 100)), limit):
        count += 1
        table.add_row(
            batch.id,
            batch.status or "",
            f"{batch.total_calls_finished:,}/{batch.total_calls_dispatched:,}/{batch.total_calls_scheduled:,}",
            _when(batch.created_at, "%m-%d %H:%M"),
            batch.name or "",
        )
    if count:
        out.print(table)
    else:
        out.print("No call batches" + (f" for agent {agent_id}." if agent_id else "."))


def show_batch(hook: CartesiaHook, out: Console, batch_id: str, *, recipients: bool, numbers: bool) -> None:
    """Status, counters, the outcome table (status x end reason); every recipient if asked."""
    from rich.table import Table

    batch = hook.get_call_batch(batch_id)
    out.print(f"[bold]{batch.id}[/bold] {batch.name or ''}", highlight=False)
    out.print(f"status: {batch.status}  ({_settled_text(batch)})", highlight=False)
    out.print(f"calls: {_counters(batch)}; retried {batch.retry_count} times", highlight=False)
    out.print(
        f"agent: {batch.agent_id}  from: {batch.from_number_id}  region: {batch.region}  "
        f"created: {_when(batch.created_at)}  updated: {_when(batch.last_updated_at)}",
        highlight=False,
    )
    rows = batch.recipients or []
    outcomes = Counter((r.status or "unknown", r.end_reason or r.error_message or "") for r in rows)
    table = Table(title="Recipient outcomes")
    table.add_column("status")
    table.add_column("end reason / error")
    table.add_column("recipients", justify="right")
    for (status, reason), n in sorted(outcomes.items(), key=lambda item: (-item[1], item[0])):
        table.add_row(status, reason, f"{n:,}")
    out.print(table)
    if not recipients:
        return
    listing = Table(title="Recipients")
    for column in ("#", "recipient", *(("to_number",) if numbers else ()), "status", "end reason / error", "call"):
        listing.add_column(column)
    for index, r in enumerate(rows, start=1):
        number = (r.to_number or "",) if numbers else ()
        listing.add_row(
            str(index), r.id, *number, r.status or "", r.end_reason or r.error_message or "", r.agent_call_id or ""
        )
    out.print(listing)


def _settled_text(batch: CallBatch) -> str:
    from airflow_provider_cartesia.waiting import WaitCriteria

    outcome = WaitCriteria().classify(batch)
    if outcome == "waiting":
        return "not settled"
    return "settled, success" if outcome == "success" else "settled, failure"


def rate_and_eta(batch: CallBatch) -> tuple[float | None, float | None]:
    """Calls finished per minute since dispatch began, and seconds until the rest finish at that rate.

    Both in the API's own time (``admitted_at`` to ``last_updated_at``), so a sped-up simulator gives
    consistent figures. None when not known yet.
    """
    start = batch.admitted_at or batch.created_at
    end = batch.last_updated_at
    if start is None or end is None or batch.total_calls_finished == 0:
        return None, None
    elapsed = (end - start).total_seconds()
    if elapsed <= 0:
        return None, None
    per_second = batch.total_calls_finished / elapsed
    target = batch.total_calls_dispatched if batch.status == "cancelled" else batch.total_calls_scheduled
    return per_second * 60, max(target - batch.total_calls_finished, 0) / per_second


def _eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "ETA -"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"ETA {hours}:{minutes:02d}:{secs:02d}" if hours else f"ETA {minutes}:{secs:02d}"


class _ConsoleLog:
    """Where :class:`BatchWatch` logs: warnings to the terminal; not the per-poll line (the bar shows it)."""

    def __init__(self, out: Console) -> None:
        self.out = out

    def info(self, *args: Any) -> None:
        pass

    def warning(self, message: str, *args: Any) -> None:
        self.out.print(f"warning: {message % args}", markup=False, highlight=False)


def watch_batch(
    hook: CartesiaHook, out: Console, batch_id: str, *, interval: float, sleep: Callable[[float], None]
) -> int:
    """Poll until the sensor's rule says settled; a progress bar of finished calls meanwhile."""
    from rich.progress import BarColumn, Progress, TextColumn

    from airflow_provider_cartesia.exceptions import CartesiaError
    from airflow_provider_cartesia.waiting import BatchWatch, WaitCriteria

    watch = BatchWatch(batch_id, WaitCriteria(), _ConsoleLog(out))
    progress = Progress(
        TextColumn("{task.fields[status]}"),
        BarColumn(bar_width=20),
        TextColumn("{task.fields[finished]}/{task.fields[scheduled]} finished, {task.fields[dispatched]} dispatched"),
        TextColumn("{task.fields[rate]}  {task.fields[eta]}"),
        console=out,
        auto_refresh=False,
    )
    task = progress.add_task(
        batch_id, total=None, status="…", finished="0", dispatched="0", scheduled="?", rate="- calls/min", eta="ETA -"
    )
    last_status: str | None = None
    with progress:
        while True:
            try:
                batch = hook.get_call_batch(batch_id)
            except CartesiaError as exc:
                verdict = watch.failed(exc)
                if verdict.outcome == "error":
                    progress.stop()
                    out.print(f"error: {verdict.message}", markup=False, highlight=False)
                    return EXIT_ERROR
            else:
                verdict = watch.observe(batch)
                rate, eta = rate_and_eta(batch)
                progress.update(
                    task,
                    total=batch.total_calls_scheduled,
                    completed=batch.total_calls_finished,
                    status=batch.status or "?",
                    finished=f"{batch.total_calls_finished:,}",
                    dispatched=f"{batch.total_calls_dispatched:,}",
                    scheduled=f"{batch.total_calls_scheduled:,}",
                    rate=f"{rate:,.1f} calls/min" if rate is not None else "- calls/min",
                    eta=_eta_text(eta) if verdict.outcome == "waiting" else "done",
                )
                if batch.status != last_status:
                    if last_status is not None:
                        progress.console.print(f"status: {last_status} -> {batch.status}", highlight=False)
                    last_status = batch.status
                progress.refresh()
                if verdict.outcome != "waiting":
                    break
            sleep(watch.next_delay(interval, time.time()))
    out.print(verdict.message, markup=False, highlight=False)
    return EXIT_OK if verdict.outcome == "success" else EXIT_BATCH_FAILED


if __name__ == "__main__":  # pragma: no cover - the package's __main__ is the entry point
    sys.exit(main())
