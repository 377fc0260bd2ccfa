"""CallBatchToWarehouseOperator: every recipient's outcome of Cartesia call batches, into a SQL table.

It only composes: the hook reads, :mod:`.rows` makes the rows, :mod:`.warehouse` writes them.
"""

from __future__ import annotations

import ast
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import Asset, BaseOperator

from airflow_provider_cartesia.api import DEFAULT_CONN_ID
from airflow_provider_cartesia.compat import AirflowFailException
from airflow_provider_cartesia.exceptions import CartesiaError, CartesiaResponseError, is_permanent
from airflow_provider_cartesia.hooks.cartesia import CartesiaHookMixin
from airflow_provider_cartesia.models import aware_datetime
from airflow_provider_cartesia.rows import batch_rows, collect_call_outcomes, export_columns
from airflow_provider_cartesia.warehouse import (
    TableName,
    WarehouseWriter,
    get_warehouse_hook,
    parse_table_name,
    table_dataset,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_cartesia.models import CallBatch

DEFAULT_TABLE = "cartesia_call_batch_recipients"
ASSET_SCHEME = "cartesia-warehouse"


def warehouse_table_asset(warehouse_conn_id: str, table: str = DEFAULT_TABLE) -> Asset:
    """The export table's Asset, ``cartesia-warehouse://<conn id>/<table>``; ``table_asset=True`` adds it."""
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

    The whole list is read, unless ``max_batch_age`` stops paging at ``updated_since - max_batch_age``.
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


class CallBatchToWarehouseOperator(CartesiaHookMixin, BaseOperator):
    """Export every recipient of Cartesia call batches, with its outcome, into a SQL table.

    One row per ``(batch_id, recipient_id)``, each batch replaced in one transaction. With neither
    ``batch_id`` nor ``batch_ids``, every batch updated in ``[updated_since, updated_before)``, by
    default the run's data interval. Returns a summary of ids and counts. See docs/exporting.md.

    :param warehouse_conn_id: a connection with a common-sql DB-API hook (postgres, mysql, sqlite, ...).
    :param table: ``table`` or ``schema.table`` (templated); letters, digits and ``_`` only.
    :param batch_id: one batch to export (templated).
    :param batch_ids: several batches (templated): a list, or a string ``"acb_1,acb_2"`` / ``"['acb_1']"``.
    :param agent_id: in scheduled mode, only this agent's batches (templated).
    :param updated_since: start of the window, inclusive (aware datetime or RFC 3339 text; templated).
        Default: the run's ``data_interval_start``.
    :param updated_before: end of the window, exclusive. Default: the run's ``data_interval_end``.
    :param max_batch_age: in scheduled mode, read the list only down to ``updated_since - max_batch_age``
        (assumes no batch changes longer than that after its creation; default: read it all).
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
        by_id = batch_id is not None or batch_ids is not None
        by_window = zip(
            ("updated_since", "updated_before", "agent_id", "max_batch_age"),
            (updated_since, updated_before, agent_id, max_batch_age),
            strict=True,
        )
        if given := [name for name, value in by_window if value is not None and by_id]:
            raise ValueError(f"{', '.join(given)} select batches only when no batch_id or batch_ids is given")
        export_columns(include_calls=include_calls, include_transcript=include_transcript)  # raises if contradictory
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
        self._selects_by_id = by_id
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
        self._table_name: TableName | None = None  # parsed once, when the task runs (the name may be templated)

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            return self._export(context)
        except CartesiaError as exc:
            if is_permanent(exc):  # a retry cannot fix it: fail at once instead of spending the task's retries
                raise AirflowFailException(str(exc)) from exc
            raise

    def _export(self, context: Context) -> dict[str, Any]:
        table = self._table_name = parse_table_name(self.table)
        batch_ids, window = self._select_batches(context)
        columns = export_columns(include_calls=self.include_calls, include_transcript=self.include_transcript)
        statuses: Counter[str] = Counter()
        end_reasons: Counter[str] = Counter()
        rows_written = 0
        self._exported = []
        with WarehouseWriter(get_warehouse_hook(self.warehouse_conn_id), table, columns) as writer:
            added = writer.ensure_table(create=self.create_table, add_missing_columns=self.add_missing_columns)
            for batch_id in batch_ids:
                batch, written = self._export_batch(writer, batch_id)
                rows_written += written
                statuses.update(batch.recipient_status_counts())
                end_reasons.update(r.end_reason or "none" for r in batch.recipients or ())
                self._exported.append(batch_id)
        self.log.info(
            "Exported %d batch(es), %d rows, into %s; recipients by status: %s",
            len(batch_ids),
            rows_written,
            table,
            dict(statuses),
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

    def _export_batch(self, writer: WarehouseWriter, batch_id: str) -> tuple[CallBatch, int]:
        started = time.monotonic()
        batch = self.hook.get_call_batch(batch_id)
        _check_recipients(batch)
        calls = None
        if self.include_calls:
            listed = self.hook.list_agent_calls(batch_id=batch.id, expand_transcript=self.include_transcript)
            calls = collect_call_outcomes(batch.recipients or [], listed, keep_transcript=self.include_transcript)
        rows = partial(  # a callable: made again if a deadlock makes the writer try again
            batch_rows,
            batch,
            exported_at=datetime.now(timezone.utc),
            adapt_time=writer.engine.adapt_time,
            calls=calls,
            include_transcript=self.include_transcript,
        )
        written = writer.replace_batch(batch.id, rows)
        elapsed = time.monotonic() - started
        self.log.info("Batch %s (%s): %d rows written in %.2f s", batch.id, batch.status, written, elapsed)
        return batch, written

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
        agent = f" of agent {self.agent_id}" if self.agent_id else ""
        self.log.info("%d batch(es)%s updated in [%s, %s)", len(selected), agent, since.isoformat(), before.isoformat())
        return list(dict.fromkeys(selected)), (since, before)

    def _window(self, context: Context) -> tuple[datetime, datetime]:
        """``[updated_since, updated_before)``: the arguments, else the run's data interval.

        A zero-length data interval (``CronTriggerTimetable``, Airflow 3's default) is widened back to
        the end of the last successful run's interval, so consecutive runs cover every change once.
        """
        since = _aware(self.updated_since, "updated_since")
        before = _aware(self.updated_before, "updated_before")
        start, end, previous = (
            _aware(context.get(key), key)
            for key in ("data_interval_start", "data_interval_end", "prev_data_interval_end_success")
        )
        if since is None and start is not None and start == end:
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

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Inputs: the exported Cartesia batches; output: the table (only with the OpenLineage provider)."""
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        inputs, output = self.lineage_datasets()
        return OperatorLineage(inputs=[Dataset(*dataset) for dataset in inputs], outputs=[Dataset(*output)])

    def lineage_datasets(self) -> tuple[list[tuple[str, str]], tuple[str, str]]:
        """``(namespace, name)`` of each exported batch and of the table, in OpenLineage's naming."""
        api = urlsplit(self.hook.settings.base_url)
        inputs = [(f"cartesia://{api.netloc}", f"agents/calls/batches/{b}") for b in self._exported]
        table = self._table_name or parse_table_name(self.table)
        return inputs, table_dataset(get_warehouse_hook(self.warehouse_conn_id), table)


def _check_recipients(batch: CallBatch) -> None:
    """Refuse to replace a batch's rows with an answer that contradicts itself (a truncating proxy, a bug)."""
    recipients, scheduled = batch.recipients or [], batch.total_calls_scheduled
    repeated = len(recipients) - len({r.id for r in recipients})
    if not recipients:
        problem = f"came without its recipients ({scheduled:,} scheduled)"
    elif "total_calls_scheduled" in batch.model_fields_set and len(recipients) != scheduled:
        problem = (
            f"lists {len(recipients):,} recipients but counts {scheduled:,} (total_calls_scheduled), an answer "
            "that contradicts itself"
        )
    elif repeated:
        problem = f"lists {repeated:,} recipient id(s) more than once"
    else:
        return
    raise CartesiaResponseError(
        f"the batch {problem}; its rows were left as they were", method="GET", path=f"/agents/calls/batches/{batch.id}"
    )


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _parse_batch_ids(value: Sequence[str] | str) -> list[str]:
    """A list of ids from a list, ``"acb_1,acb_2"`` or a rendered ``"['acb_1', 'acb_2']"``; order kept, no repeats."""
    items: Iterable[Any] = value
    if isinstance(value, str):
        text = value.strip()
        try:
            items = ast.literal_eval(text) if text.startswith("[") else text.split(",")
        except (ValueError, SyntaxError):
            raise AirflowFailException("batch_ids is neither a list nor comma-separated ids") from None
    return list(dict.fromkeys(i for i in (str(item).strip() for item in items) if i))


def _aware(value: Any, name: str) -> datetime | None:
    """``value`` as an aware UTC datetime; a context value may be a lazy proxy (Airflow 3.3), and one around None
    is not None."""
    try:
        return aware_datetime(getattr(value, "__wrapped__", value), name)
    except ValueError as exc:  # bad user input: retrying cannot fix it
        raise AirflowFailException(str(exc)) from None
