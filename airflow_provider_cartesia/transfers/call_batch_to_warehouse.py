"""CallBatchToWarehouseOperator: every recipient's outcome of Cartesia call batches, into a SQL table.

The operator only composes: :class:`~airflow_provider_cartesia.hooks.cartesia.CartesiaHook` reads
the batches, :mod:`airflow_provider_cartesia.rows` turns each into rows and
:mod:`airflow_provider_cartesia.warehouse` writes them. It builds no SQL and no HTTP request itself.
"""

from __future__ import annotations

import ast
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

from airflow_provider_cartesia.api import DEFAULT_CONN_ID, cyclic_gc_paused
from airflow_provider_cartesia.compat import AirflowFailException
from airflow_provider_cartesia.exceptions import (
    CartesiaError,
    CartesiaResponseError,
    is_permanent,
)
from airflow_provider_cartesia.rows import batch_rows, collect_call_outcomes, export_columns, status_counts
from airflow_provider_cartesia.warehouse import TableName, parse_table_name

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
    from airflow_provider_cartesia.models import CallBatch
    from airflow_provider_cartesia.warehouse import WarehouseWriter

DEFAULT_TABLE = "cartesia_call_batch_recipients"
ASSET_SCHEME = "cartesia-warehouse"


def warehouse_table_asset(warehouse_conn_id: str, table: str = DEFAULT_TABLE) -> Asset:
    """The Airflow Asset standing for the export table, ``cartesia-warehouse://<conn id>/<table>``.

    The operator adds it to its outlets with ``table_asset=True``; use the same call in a consumer
    DAG's ``schedule`` to run it after each export.
    """
    name = parse_table_name(table)
    return Asset(uri=f"{ASSET_SCHEME}://{warehouse_conn_id}/{name}", name=f"{warehouse_conn_id}.{name}")


def batches_updated_between(
    batches: Iterable[CallBatch],
    updated_since: datetime,
    updated_before: datetime,
    *,
    max_batch_age: timedelta | None = None,
) -> Iterator[CallBatch]:
    """Batches whose ``last_updated_at`` lies in ``[updated_since, updated_before)``, from a newest-created-first list.

    The list is ordered by creation, not by update, and a batch can change long after it was
    created (its calls finish, a retry re-queues it). So the order proves only one thing: a batch
    created at or after ``updated_before`` was not updated before it (``last_updated_at >=
    created_at``); such batches, which come first, are skipped, but the list must still be read on.
    Nothing in the order bounds how old a batch updated in the window may be, so the whole list is
    read unless ``max_batch_age`` is given: the promise that no batch changes more than that long
    after its creation lets paging stop at the first batch created before ``updated_since -
    max_batch_age``.
    """
    oldest = updated_since - max_batch_age if max_batch_age is not None else None
    for batch in batches:
        created = batch.created_at
        if oldest is not None and created is not None and created < oldest:
            return
        if created is not None and created >= updated_before:
            continue
        updated = batch.last_updated_at or created
        if updated is not None and updated_since <= updated < updated_before:
            yield batch


class CallBatchToWarehouseOperator(BaseOperator):
    """Export every recipient of Cartesia call batches, with its outcome, into a SQL table.

    One row per ``(batch_id, recipient_id)``: ``batch_id, recipient_id, batch_name, agent_id,
    batch_status, to_number, status, end_reason, error_message, agent_call_id, created_at, metadata,
    exported_at``; with ``include_calls=True`` also the latest call attempt's ``call_status,
    call_start_time, call_end_time, call_duration_seconds, call_summary, call_attempts`` (and
    ``call_transcript`` with ``include_transcript=True``). See :mod:`airflow_provider_cartesia.rows`
    for how calls are matched to recipients, and :mod:`airflow_provider_cartesia.warehouse` for the
    column types per engine (TIMESTAMPTZ and JSONB on PostgreSQL, DATETIME(6) in UTC and JSON on
    MySQL/MariaDB, ISO 8601 UTC text on SQLite).

    **Which batches.** ``batch_id`` (templated, e.g. from a sensor's XCom) or ``batch_ids``; with
    neither, every batch (optionally of ``agent_id``) whose ``last_updated_at`` lies in
    ``[updated_since, updated_before)``, which default to the run's data interval. A batch is thus
    exported by the run whose interval holds its latest change, with its state at export time; see
    :func:`batches_updated_between` for how far the list is read. A data interval of zero length
    (Airflow 3's default cron timetable gives those) is widened back to the end of the last
    successful run's interval; with no earlier success, the run fails and says how to set a window.

    **Idempotent and atomic per batch.** Each batch's rows are deleted and re-inserted in one
    transaction: a rerun or retry leaves one row per recipient with its latest state, a failure
    leaves that batch's previous rows, and readers never see half a batch. Batches are written one
    after the other (memory holds one batch), so a failure after some batches leaves those exported;
    the retry exports them again.

    **No personal data in logs.** Phone numbers, metadata, summaries and transcripts are written to
    the table only; logs, errors and the XCom carry ids and counts.

    Returns (XCom) a summary: ``table``, ``batch_ids``, ``rows_written``, ``status_counts``,
    ``end_reason_counts``, plus ``window`` in scheduled mode and ``columns_added``.

    :param warehouse_conn_id: an Airflow connection with a common-sql DB-API hook (postgres, mysql,
        sqlite, snowflake, ...). SQLite needs no provider: the connection's host is the file's path.
    :param table: ``table`` or ``schema.table`` (templated); letters, digits and ``_`` only.
    :param batch_id: one batch to export (templated).
    :param batch_ids: several batches (templated): a list, or a string ``"acb_1,acb_2"`` / ``"['acb_1']"``.
    :param agent_id: in scheduled mode, only this agent's batches (templated).
    :param updated_since: start of the window, inclusive (aware datetime or ISO 8601 text; templated).
        Default: the run's ``data_interval_start``.
    :param updated_before: end of the window, exclusive. Default: the run's ``data_interval_end``.
    :param max_batch_age: in scheduled mode, assume no batch changes more than this long after its
        creation, so the list is read only down to ``updated_since - max_batch_age`` (default: read it
        all; set it only if you never retry old batches).
    :param include_calls: add the latest call attempt's columns (pages the batch's calls).
    :param include_transcript: add ``call_transcript`` (JSON) as well; needs ``include_calls``.
    :param create_table: create the table when it does not exist (default True).
    :param add_missing_columns: add export columns an existing table lacks, instead of failing.
    :param table_asset: add :func:`warehouse_table_asset` of the table to the task's outlets.
    :param cartesia_conn_id: the Airflow connection of type ``cartesia`` (templated).
    """

    template_fields: Sequence[str] = (
        "batch_id",
        "batch_ids",
        "agent_id",
        "updated_since",
        "updated_before",
        "table",
        "cartesia_conn_id",
    )
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        warehouse_conn_id: str,
        table: str = DEFAULT_TABLE,
        batch_id: str | None = None,
        batch_ids: Sequence[str] | str | None = None,
        agent_id: str | None = None,
        updated_since: datetime | str | None = None,
        updated_before: datetime | str | None = None,
        max_batch_age: timedelta | None = None,
        include_calls: bool = False,
        include_transcript: bool = False,
        create_table: bool = True,
        add_missing_columns: bool = False,
        table_asset: bool = False,
        cartesia_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        if batch_id is not None and batch_ids is not None:
            raise ValueError("Pass batch_id or batch_ids, not both")
        by_window = {
            "updated_since": updated_since,
            "updated_before": updated_before,
            "agent_id": agent_id,
            "max_batch_age": max_batch_age,
        }
        if batch_id is not None or batch_ids is not None:
            given = [name for name, value in by_window.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} select batches only when no batch_id or batch_ids is given")
        if include_transcript and not include_calls:
            raise ValueError("include_transcript=True needs include_calls=True")
        if max_batch_age is not None and max_batch_age < timedelta(0):
            raise ValueError("max_batch_age must not be negative")
        if not _is_template(table):
            parse_table_name(table)  # a hostile or malformed name fails the DAG at parse time
        elif table_asset:
            raise ValueError("table_asset=True needs a literal table name, not a template")
        if table_asset:
            outlets = list(kwargs.pop("outlets", None) or [])
            kwargs["outlets"] = [*outlets, warehouse_table_asset(warehouse_conn_id, table)]
        super().__init__(**kwargs)
        self.warehouse_conn_id = warehouse_conn_id
        self.table = table
        self.batch_id = batch_id
        self.batch_ids = batch_ids
        # Remembered before rendering: ids that render to None (an upstream XCom that was never pushed)
        # must fail, not quietly widen the export to every batch updated in the data interval.
        self._selects_by_id = batch_id is not None or batch_ids is not None
        self.agent_id = agent_id
        self.updated_since = updated_since
        self.updated_before = updated_before
        self.max_batch_age = max_batch_age
        self.include_calls = include_calls
        self.include_transcript = include_transcript
        self.create_table = create_table
        self.add_missing_columns = add_missing_columns
        self.cartesia_conn_id = cartesia_conn_id
        self._exported: list[str] = []

    @cached_property
    def hook(self) -> CartesiaHook:
        from airflow_provider_cartesia.hooks.cartesia import CartesiaHook

        return CartesiaHook(self.cartesia_conn_id)

    # -- execution ----------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            return self._export(context)
        except CartesiaError as exc:
            if is_permanent(exc):  # a retry cannot fix it: fail at once instead of spending the task's retries
                raise AirflowFailException(str(exc)) from exc
            raise

    def _export(self, context: Context) -> dict[str, Any]:
        from airflow_provider_cartesia.warehouse import WarehouseWriter, get_warehouse_hook

        table = parse_table_name(self.table)
        batch_ids, window = self._select_batches(context)
        columns = export_columns(include_calls=self.include_calls, include_transcript=self.include_transcript)
        statuses: Counter[str] = Counter()
        end_reasons: Counter[str] = Counter()
        rows_written = 0
        self._exported = []
        with WarehouseWriter(get_warehouse_hook(self.warehouse_conn_id), self.table, columns) as writer:
            added = writer.ensure_table(create=self.create_table, add_missing_columns=self.add_missing_columns)
            for batch_id in batch_ids:
                with cyclic_gc_paused():
                    written, batch_statuses, batch_end_reasons = self._export_batch(writer, batch_id)
                rows_written += written
                statuses.update(batch_statuses)
                end_reasons.update(batch_end_reasons)
                self._exported.append(batch_id)
        self.log.info(
            "Exported %d batch(es), %s rows, into %s; recipients by status: %s",
            len(batch_ids),
            f"{rows_written:,}",
            table,
            dict(statuses) or "-",
        )
        summary: dict[str, Any] = {
            "table": str(table),
            "batch_ids": list(batch_ids),
            "rows_written": rows_written,
            "status_counts": dict(statuses),
            "end_reason_counts": dict(end_reasons),
            "columns_added": added,
        }
        if window is not None:
            summary["window"] = {"updated_since": window[0].isoformat(), "updated_before": window[1].isoformat()}
        return summary

    def _export_batch(self, writer: WarehouseWriter, batch_id: str) -> tuple[int, dict[str, int], dict[str, int]]:
        started = time.monotonic()
        batch = self.hook.get_call_batch(batch_id)
        _check_recipients(batch)
        calls = None
        if self.include_calls:
            calls = collect_call_outcomes(
                batch.recipients or [],
                self.hook.list_agent_calls(batch_id=batch.id, expand_transcript=self.include_transcript),
                keep_transcript=self.include_transcript,
            )
        fetched = time.monotonic()
        exported_at = datetime.now(timezone.utc)

        def rows() -> Iterator[tuple[Any, ...]]:  # made again if a deadlock makes the writer try again
            return batch_rows(
                batch,
                exported_at=exported_at,
                adapt_time=writer.adapt_time,
                calls=calls,
                include_transcript=self.include_transcript,
            )

        written = writer.replace_batch(batch.id, rows)
        by_status, by_end_reason = status_counts(batch)
        self.log.info(
            "Batch %s (%s): %s rows written in %.2f s (fetch %.2f s, write %.2f s)",
            batch.id,
            batch.status,
            f"{written:,}",
            time.monotonic() - started,
            fetched - started,
            time.monotonic() - fetched,
        )
        return written, by_status, by_end_reason

    def _select_batches(self, context: Context) -> tuple[list[str], tuple[datetime, datetime] | None]:
        """The ids to export, and the ``[since, before)`` window when they were selected by update time."""
        if self.batch_id is not None:
            batch_id = str(self.batch_id).strip()
            if not batch_id:
                raise AirflowFailException("batch_id rendered to an empty string")
            return [batch_id], None
        if self.batch_ids is not None:
            return _parse_batch_ids(self.batch_ids), None
        if self._selects_by_id:
            raise AirflowFailException(
                "batch_id/batch_ids rendered to None (an upstream XCom that was never pushed?); refusing to "
                "export every batch updated in the data interval instead. Check the task that provides the ids"
            )
        since, before = self._window(context)
        if since > before:
            raise AirflowFailException(f"updated_since ({since.isoformat()}) is after updated_before ({before})")
        listed = self.hook.list_call_batches(agent_id=self.agent_id)
        selected = [b.id for b in batches_updated_between(listed, since, before, max_batch_age=self.max_batch_age)]
        self.log.info(
            "%d batch(es)%s updated in [%s, %s)",
            len(selected),
            f" of agent {self.agent_id}" if self.agent_id else "",
            since.isoformat(),
            before.isoformat(),
        )
        return list(dict.fromkeys(selected)), (since, before)

    def _window(self, context: Context) -> tuple[datetime, datetime]:
        """``[updated_since, updated_before)``: the arguments, else the run's data interval.

        A data interval of zero length (Airflow 3's default cron timetable, ``CronTriggerTimetable``,
        and manual runs of it) is a point in time, not a window: it is widened back to the end of the
        last successful run's interval, so consecutive runs cover every change once. With no earlier
        success to continue from, the run fails and says how to give it a window.
        """
        since = _as_aware(self.updated_since, "updated_since")
        before = _as_aware(self.updated_before, "updated_before")
        start = _as_aware(context_value(context, "data_interval_start"), "data_interval_start")
        end = _as_aware(context_value(context, "data_interval_end"), "data_interval_end")
        if since is None and start is not None and start == end:
            previous = _as_aware(
                context_value(context, "prev_data_interval_end_success"), "prev_data_interval_end_success"
            )
            if previous is None or previous >= start:
                raise AirflowFailException(
                    f"This run's data interval is a single instant ({start.isoformat()}; Airflow 3's default cron "
                    "timetable gives such runs) and there is no earlier successful run to continue from, so there is "
                    "no window to export. Set updated_since (e.g. '{{ data_interval_end - macros.timedelta(hours=1) "
                    "}}'), or schedule the DAG with an interval timetable (CronDataIntervalTimetable, or "
                    "CronTriggerTimetable(..., interval=...))"
                )
            start = previous
        since = since or start
        before = before or end
        if since is None or before is None:
            raise AirflowFailException(
                "No batch to export: give batch_id or batch_ids, or updated_since and updated_before (this run "
                "has no data interval to default to)"
            )
        return since, before

    # -- lineage ------------------------------------------------------------------------------

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Inputs: the exported Cartesia batches; output: the table (only with the OpenLineage provider)."""
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        inputs, output = self.lineage_datasets()
        return OperatorLineage(
            inputs=[Dataset(namespace=ns, name=name) for ns, name in inputs],
            outputs=[Dataset(namespace=output[0], name=output[1])],
        )

    def lineage_datasets(self) -> tuple[list[tuple[str, str]], tuple[str, str]]:
        """``(namespace, name)`` of each exported batch and of the table, in OpenLineage's naming."""
        from urllib.parse import urlsplit

        from airflow_provider_cartesia.compat import BaseHook

        api = urlsplit(self.hook.settings.base_url)
        inputs = [(f"cartesia://{api.netloc}", f"agents/calls/batches/{b}") for b in self._exported]
        from airflow_provider_cartesia.warehouse import is_sqlite_connection

        conn = BaseHook.get_connection(self.warehouse_conn_id)
        kind = "sqlite" if is_sqlite_connection(conn.conn_type, conn.host, conn.port) else conn.conn_type
        return inputs, table_dataset(kind, conn.host, conn.port, conn.schema, parse_table_name(self.table))


def table_dataset(
    conn_type: str | None, host: str | None, port: int | None, database: str | None, table: TableName
) -> tuple[str, str]:
    """OpenLineage ``(namespace, name)`` of a table: ``postgres://host:5432`` + ``db.schema.table``, etc."""
    kind = (conn_type or "sql").lower()
    if kind == "sqlite":
        return f"sqlite://{host or ''}", str(table)
    scheme = {"postgresql": "postgres", "mariadb": "mysql"}.get(kind, kind)
    default_port = {"postgres": 5432, "mysql": 3306}.get(scheme)
    authority = f"{host or 'localhost'}:{port or default_port}" if (port or default_port) else (host or "localhost")
    if scheme == "postgres":
        name = ".".join(p for p in (database, table.schema or "public", table.name) if p)
    else:
        name = ".".join(p for p in (table.schema or database, table.name) if p)
    return f"{scheme}://{authority}", name


def _check_recipients(batch: CallBatch) -> None:
    """Refuse to replace a batch's rows with an answer that contradicts itself; the rows stay as they were.

    A batch always has at least one recipient (the API refuses an empty create), and its
    ``total_calls_scheduled`` counts them: a list that is empty, longer or shorter than that count,
    or that names one recipient twice, is a broken answer (a truncating proxy, a bug), not the batch.
    """
    recipients = batch.recipients
    path = f"/agents/calls/batches/{batch.id}"
    scheduled = batch.total_calls_scheduled
    if not recipients:
        raise CartesiaResponseError(
            f"the batch came without its recipients ({scheduled:,} scheduled); its rows were left as they were",
            method="GET",
            path=path,
        )
    counted = "total_calls_scheduled" in batch.model_fields_set
    if counted and len(recipients) != scheduled:
        raise CartesiaResponseError(
            f"the batch lists {len(recipients):,} recipients but counts {scheduled:,} (total_calls_scheduled); "
            "refusing to replace its rows with an answer that contradicts itself, so they were left as they were",
            method="GET",
            path=path,
        )
    unique = len({r.id for r in recipients})
    if unique != len(recipients):
        raise CartesiaResponseError(
            f"the batch lists {len(recipients) - unique:,} recipient id(s) more than once; its rows were left as "
            "they were",
            method="GET",
            path=path,
        )


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _parse_batch_ids(value: Sequence[str] | str) -> list[str]:
    """A list of ids from a list, ``"acb_1,acb_2"`` or a rendered ``"['acb_1', 'acb_2']"``; order kept, no repeats."""
    items: Iterable[Any]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise AirflowFailException("batch_ids is neither a list nor comma-separated ids") from None
            items = parsed if isinstance(parsed, (list, tuple)) else [parsed]
        else:
            items = text.split(",")
    else:
        items = value
    ids = [str(item).strip() for item in items]
    return list(dict.fromkeys(i for i in ids if i))


def context_value(context: Context | Mapping[str, Any], key: str) -> Any:
    """``context[key]`` itself, or None: Airflow 3.3 hands some values over as lazy proxies, and a proxy
    around None is not None."""
    value = context.get(key)
    return None if value is None else getattr(value, "__wrapped__", value)


def _as_aware(value: Any, what: str) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise AirflowFailException(f"{what} {value!r} is not an ISO 8601 date-time") from None
    if not isinstance(value, datetime):
        raise AirflowFailException(f"{what} must be a date-time, got {type(value).__name__}")
    if value.tzinfo is None:
        raise AirflowFailException(f"{what} must carry a time zone (e.g. 2026-06-01T00:00:00+00:00)")
    return value.astimezone(timezone.utc)
