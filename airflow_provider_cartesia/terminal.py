"""``python -m airflow_provider_cartesia batches list|get|watch``: call batches for a person at a terminal.

It reads through Airflow's ``cartesia`` connection and ends ``watch`` by the sensor's own rule
(:class:`~airflow_provider_cartesia.waiting.BatchWatch`). Phone numbers only with ``--show-numbers``;
metadata never. See docs/testing.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Column, Table

from airflow_provider_cartesia.compat import AirflowNotFoundException
from airflow_provider_cartesia.exceptions import CartesiaError
from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
from airflow_provider_cartesia.models import CallBatch
from airflow_provider_cartesia.waiting import BatchWatch, Verdict, WaitCriteria

PROG = "python -m airflow_provider_cartesia"
DEFAULT_WATCH_INTERVAL = 10.0
DEFAULT_LIST_LIMIT = 20
EXIT_OK, EXIT_BATCH_FAILED, EXIT_ERROR = 0, 1, 2
SETTLED = {"waiting": "not settled", "success": "settled, success", "failure": "settled, failure"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Look at Cartesia call batches through Airflow's cartesia connection."
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
    argv: Sequence[str] | None = None, *, console: Console | None = None, sleep: Callable[[float], None] = time.sleep
) -> int:
    """Run one command; returns the exit status. ``console`` and ``sleep`` (polls and retry waits) are for tests."""
    args = _parser().parse_args(argv)
    out = console if console is not None else Console()
    errors = console if console is not None else Console(stderr=True)
    hook = CartesiaHook(args.conn_id)
    hook._sleep = sleep  # the hook's retry waits follow the same clock as the polls
    try:
        if args.action == "list" and args.limit < 1:
            message = "error: --limit must be at least 1"
        elif args.action == "watch" and args.interval <= 0:
            message = "error: --interval must be more than 0 seconds"
        elif args.action == "watch":
            return watch_batch(hook, out, args.batch_id, interval=args.interval, sleep=sleep)
        elif args.action == "list":
            list_batches(hook, out, agent_id=args.agent, limit=args.limit)
            return EXIT_OK
        else:
            numbers = args.show_numbers
            show_batch(hook, out, args.batch_id, recipients=args.recipients or numbers, numbers=numbers)
            return EXIT_OK
    except CartesiaError as exc:
        message = f"error: {exc}"
    except AirflowNotFoundException:
        message = (
            f"error: Airflow has no connection '{args.conn_id}'. Set AIRFLOW_CONN_{args.conn_id.upper()} (JSON "
            f"form, see docs/connection.md) or add it with 'airflow connections add {args.conn_id} --conn-type "
            "cartesia ...', or pass --conn-id"
        )
    errors.print(message, markup=False, highlight=False)
    return EXIT_ERROR


def _when(value: Any, fmt: str = "%Y-%m-%d %H:%M:%SZ") -> str:
    return value.strftime(fmt) if value is not None else "-"


def list_batches(hook: CartesiaHook, out: Console, *, agent_id: str | None, limit: int) -> None:
    """A table of the newest ``limit`` batches (of one agent)."""
    of_agent = f" (agent {agent_id})" if agent_id else ""
    table = Table(title=f"Call batches, newest first{of_agent}", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True, min_width=28)
    table.add_column("status", no_wrap=True, min_width=11)
    table.add_column("fin/disp/sched", justify="right", no_wrap=True, min_width=14)
    table.add_column("created", no_wrap=True, min_width=11)
    table.add_column("name")
    for batch in islice(hook.list_call_batches(agent_id=agent_id, page_size=min(limit, 100)), limit):
        table.add_row(
            batch.id,
            batch.status or "",
            f"{batch.total_calls_finished:,}/{batch.total_calls_dispatched:,}/{batch.total_calls_scheduled:,}",
            _when(batch.created_at, "%m-%d %H:%M"),
            batch.name or "",
        )
    out.print(table if table.row_count else "No call batches" + (f" for agent {agent_id}." if agent_id else "."))


def show_batch(hook: CartesiaHook, out: Console, batch_id: str, *, recipients: bool, numbers: bool) -> None:
    """Status, counters, the outcome table (status x end reason); every recipient if asked."""
    batch = hook.get_call_batch(batch_id)
    settled = SETTLED[WaitCriteria().classify(batch)]
    for line in (
        f"[bold]{batch.id}[/bold] {batch.name or ''}",
        f"status: {batch.status}  ({settled})",
        f"calls: {batch.total_calls_finished:,} finished / {batch.total_calls_dispatched:,} dispatched / "
        f"{batch.total_calls_scheduled:,} scheduled; retried {batch.retry_count} times",
        f"agent: {batch.agent_id}  from: {batch.from_number_id}  region: {batch.region}  "
        f"created: {_when(batch.created_at)}  updated: {_when(batch.last_updated_at)}",
    ):
        out.print(line, highlight=False)
    rows = batch.recipients or []
    outcomes = Counter((r.status or "unknown", r.end_reason or r.error_message or "") for r in rows)
    table = Table("status", "end reason / error", Column("recipients", justify="right"), title="Recipient outcomes")
    for (status, reason), n in sorted(outcomes.items(), key=lambda item: (-item[1], item[0])):
        table.add_row(status, reason, f"{n:,}")
    out.print(table)
    if not recipients:
        return
    columns = ["#", "recipient", *(["to_number"] if numbers else []), "status", "end reason / error", "call"]
    listing = Table(*columns, title="Recipients")
    for index, r in enumerate(rows, start=1):
        number = (r.to_number or "",) if numbers else ()
        listing.add_row(
            str(index), r.id, *number, r.status or "", r.end_reason or r.error_message or "", r.agent_call_id or ""
        )
    out.print(listing)


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


def _progress_text(batch: CallBatch, verdict: Verdict) -> str:
    """Finished of scheduled, dispatched, calls per minute and the ETA (``done`` once settled)."""
    rate, eta = rate_and_eta(batch)
    eta_text = "done" if verdict.outcome != "waiting" else "ETA -"
    if eta is not None and verdict.outcome == "waiting":
        minutes, secs = divmod(round(eta), 60)
        hours, minutes = divmod(minutes, 60)
        eta_text = f"ETA {hours}:{minutes:02d}:{secs:02d}" if hours else f"ETA {minutes}:{secs:02d}"
    rate_text = f"{rate:,.1f}" if rate is not None else "-"
    return (
        f"{batch.total_calls_finished:,}/{batch.total_calls_scheduled:,} finished, "
        f"{batch.total_calls_dispatched:,} dispatched {rate_text} calls/min  {eta_text}"
    )


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
    watch = BatchWatch(batch_id, WaitCriteria(), _ConsoleLog(out))
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        TextColumn("{task.fields[text]}"),
        console=out,
        auto_refresh=False,
    )
    task = progress.add_task("…", total=None, text="")
    last_status: str | None = None
    with progress:
        while True:
            try:
                batch = hook.get_call_batch(batch_id)
            except CartesiaError as exc:
                verdict = watch.failed(exc)
                if verdict.outcome == "error":
                    break
            else:
                verdict = watch.observe(batch)
                if last_status is not None and batch.status != last_status:
                    progress.console.print(f"status: {last_status} -> {batch.status}", highlight=False)
                last_status = batch.status
                progress.update(
                    task,
                    total=batch.total_calls_scheduled,
                    completed=batch.total_calls_finished,
                    description=batch.status or "?",
                    text=_progress_text(batch, verdict),
                )
                progress.refresh()
                if verdict.outcome != "waiting":
                    break
            sleep(watch.next_delay(interval, time.time()))
    prefix = "error: " if verdict.outcome == "error" else ""
    out.print(prefix + verdict.message, markup=False, highlight=False)
    return {"success": EXIT_OK, "failure": EXIT_BATCH_FAILED}.get(verdict.outcome, EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover - the package's __main__ is the entry point
    sys.exit(main())
