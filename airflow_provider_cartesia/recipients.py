"""Recipients of a call batch: validated, loaded from SQL, and split into batches the API accepts.

Everything here is checked *before* a request is sent, so a bad row costs nothing but an error
message. Errors name the offending row by its 1-based position (``recipient #17``) and show at
most the first four characters of a number (``+141…``), never a whole phone number or any metadata.

- :func:`validate_recipients`: ``[{"to_number": "+1...", "metadata": {...}}, ...]`` as the API takes
  them; E.164 numbers (ASCII digits), metadata a JSON object without NUL characters nested at most
  :data:`MAX_METADATA_DEPTH` levels, no number twice (unless allowed). No size limit: Cartesia
  documents none, so its own 400 decides (the create operator names the recipient it refused).
- :func:`recipients_from_rows`: rows of a SQL query (a ``to_number`` column, optionally a
  ``metadata`` column holding a JSON object, every other column a metadata key) as recipients.
- :func:`load_recipients_from_sql`: run the query on an Airflow SQL connection and do the above.
- :func:`split_recipients`: more than :data:`MAX_RECIPIENTS_PER_BATCH` recipients become several
  batches of balanced size, in the given order (5,001 → 2,501 + 2,500).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

from airflow_provider_cartesia.models import MAX_RECIPIENTS_PER_BATCH

E164 = re.compile(r"\+[1-9][0-9]{1,14}")
"""A destination number as the API takes it: ``+``, a country code and at most 15 ASCII digits in all
(``\\d`` would also match Arabic-Indic or fullwidth digits: one person under three spellings)."""
MAX_METADATA_DEPTH = 100
"""Deepest nesting of a recipient's metadata (objects and arrays). Cartesia documents none; JSON
encoders recurse per level (Python's fails near 1,000), so deeper metadata cannot be sent reliably."""
NUL = "\x00"
MAX_ERRORS_SHOWN = 5
RECIPIENT_KEYS = frozenset({"to_number", "metadata"})
TO_NUMBER_COLUMN = "to_number"
METADATA_COLUMN = "metadata"


class InvalidRecipientsError(ValueError):
    """Recipients the API would refuse; the message names rows by position, never a whole number."""

    def __init__(self, problems: Sequence[str], total: int | None = None) -> None:
        self.problems = list(problems)
        shown = "; ".join(self.problems[:MAX_ERRORS_SHOWN])
        more = len(self.problems) - MAX_ERRORS_SHOWN
        extra = f"; and {more:,} more problem(s)" if more > 0 else ""
        of = f" (of {total:,} recipients)" if total is not None else ""
        super().__init__(f"Invalid recipients{of}: {shown}{extra}")


def mask_number(value: object) -> str:
    """At most the first four characters of ``value`` then ``…``: enough to find the row, not to dial it."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    keep = min(4, len(value) // 2)
    return f"{value[:keep]}…"


def _metadata_problem(metadata: object) -> str | None:
    """What makes ``metadata`` unsendable, or None. Walks it without recursion (depth, NUL, JSON)."""
    if not isinstance(metadata, Mapping):
        return f"metadata must be a JSON object or null, got a {type(metadata).__name__}"
    if not all(isinstance(key, str) for key in metadata):
        return "metadata keys must be strings"
    stack: list[tuple[object, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (Mapping, list, tuple)) and depth > MAX_METADATA_DEPTH:
            return f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep (or contains itself); flatten it"
        if isinstance(value, Mapping):
            if any(isinstance(key, str) and NUL in key for key in value):
                return "a metadata key holds a NUL character (\\u0000); remove it"
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and NUL in value:
            return "a metadata text value holds a NUL character (\\u0000); remove it"
    try:
        json.dumps(metadata, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        reason = str(exc).split(" is not JSON serializable")[0].replace("Object of type ", "a ")
        return f"metadata is not JSON ({reason})"
    return None


def validate_recipients(
    items: Iterable[Any],
    *,
    allow_duplicate_numbers: bool = False,
) -> list[dict[str, Any]]:
    """Check every recipient and return them as the API takes them (``metadata`` left out when null).

    :param items: mappings with ``to_number`` (E.164 text, ASCII digits) and optionally ``metadata`` (a
        JSON object).
        Any other key is an error: put extra fields in ``metadata``.
    :param allow_duplicate_numbers: accept a number listed twice (dialed twice). Off by default.
    :raises InvalidRecipientsError: naming each bad row by position (first few shown), or when empty.
    """
    problems: list[str] = []
    out: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    count = 0
    for count, item in enumerate(items, start=1):
        where = f"recipient #{count}"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: must be an object with to_number and metadata, got a {type(item).__name__}")
            continue
        unknown = sorted(str(k) for k in item if k not in RECIPIENT_KEYS)
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(unknown)}; put extra fields in metadata")
            continue
        number = item.get("to_number")
        if not isinstance(number, str):
            what = "is missing" if number is None else f"must be text, got a {type(number).__name__}"
            problems.append(f"{where}: to_number {what}")
            continue
        if not E164.fullmatch(number):
            problems.append(
                f"{where}: to_number is not E.164 ({mask_number(number)}): "
                "+ and a country code, 2 to 15 ASCII digits (0-9), no spaces"
            )
            continue
        metadata = item.get("metadata")
        if metadata is not None:
            problem = _metadata_problem(metadata)
            if problem:
                problems.append(f"{where}: {problem}")
                continue
        if not allow_duplicate_numbers:
            earlier = first_seen.setdefault(number, count)
            if earlier != count:
                problems.append(
                    f"{where}: to_number repeats recipient #{earlier} ({mask_number(number)}); "
                    "set allow_duplicate_numbers=True to dial a number more than once"
                )
                continue
        recipient: dict[str, Any] = {"to_number": number}
        if metadata is not None:
            recipient["metadata"] = dict(metadata)
        out.append(recipient)
    if count == 0:
        raise InvalidRecipientsError(["there are none; a batch needs at least one recipient"], 0)
    if problems:
        raise InvalidRecipientsError(problems, count)
    return out


_REFUSED_RECIPIENT = re.compile(r"\brecipients\[(\d+)\]")


def refused_recipient(error: Exception, count: int) -> int | None:
    """The 0-based index of the recipient a create's 400 names (``recipients[3].metadata ...``), or None.

    Only a 400/422 (:class:`CartesiaBadRequestError`) whose message points into a list of ``count``.
    """
    from airflow_provider_cartesia.exceptions import CartesiaBadRequestError

    if not isinstance(error, CartesiaBadRequestError):
        return None
    match = _REFUSED_RECIPIENT.search(error.message or "")
    if match is None or int(match[1]) >= count:
        return None
    return int(match[1])


def split_recipients(items: Sequence[Any], max_per_batch: int = MAX_RECIPIENTS_PER_BATCH) -> list[list[Any]]:
    """``items`` in as few batches as the limit allows, of balanced sizes, order kept.

    5,000 recipients stay one batch; 5,001 become 2,501 + 2,500; 12,000 become 3 batches of 4,000.
    """
    if max_per_batch < 1:
        raise ValueError("max_per_batch must be at least 1")
    if not items:
        return []
    parts = math.ceil(len(items) / max_per_batch)
    size, extra = divmod(len(items), parts)
    out: list[list[Any]] = []
    start = 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def json_value(value: Any) -> Any:
    """A database value as a JSON-safe metadata value (dates as ISO 8601, decimals as numbers)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (Mapping, list, tuple)):
        return value  # JSON / array columns (psycopg parses them); checked when validated
    raise TypeError(f"a {type(value).__name__} value has no JSON form")


def recipients_from_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows of a query as recipient mappings (validate them with :func:`validate_recipients`).

    Column names are matched case-insensitively. ``to_number`` is required. A ``metadata`` column
    holds a JSON object (text, or already parsed) or NULL; every other column becomes a metadata key
    of the same name (a key also in the ``metadata`` object is an error). With neither, a recipient
    has no metadata.
    """
    lowered = [str(c).lower() for c in columns]
    if TO_NUMBER_COLUMN not in lowered:
        shown = ", ".join(str(c) for c in columns) or "none"
        raise InvalidRecipientsError([f"the query returns no to_number column (columns: {shown})"])
    for name in (TO_NUMBER_COLUMN, METADATA_COLUMN):
        if lowered.count(name) > 1:
            raise InvalidRecipientsError([f"the query returns the {name} column more than once"])
    number_at = lowered.index(TO_NUMBER_COLUMN)
    metadata_at = lowered.index(METADATA_COLUMN) if METADATA_COLUMN in lowered else None
    others = [(i, str(columns[i])) for i in range(len(columns)) if i not in (number_at, metadata_at)]
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    for position, row in enumerate(rows, start=1):
        where = f"recipient #{position} (row {position} of the query)"
        metadata: dict[str, Any] | None = None
        if metadata_at is not None and row[metadata_at] is not None:
            raw = row[metadata_at]
            if isinstance(raw, (bytes, bytearray, memoryview)):
                raw = bytes(raw).decode("utf-8", errors="replace")
            if isinstance(raw, str):
                try:
                    raw = json.loads(raw)
                except ValueError:
                    problems.append(f"{where}: the metadata column is not valid JSON")
                    continue
                except RecursionError:
                    problems.append(f"{where}: the metadata column is nested too deeply to read as JSON")
                    continue
            if not isinstance(raw, Mapping):
                problems.append(f"{where}: the metadata column must hold a JSON object, got a {type(raw).__name__}")
                continue
            metadata = dict(raw)
        if others:
            metadata = metadata or {}
            try:
                for index, name in others:
                    if name in metadata:
                        raise KeyError(name)
                    metadata[name] = json_value(row[index])
            except KeyError as exc:
                problems.append(f"{where}: column {exc.args[0]} is also a key of the metadata column")
                continue
            except TypeError as exc:
                problems.append(f"{where}: column {name}: {exc}")
                continue
        recipient: dict[str, Any] = {"to_number": row[number_at]}
        if metadata is not None:
            recipient["metadata"] = metadata
        out.append(recipient)
    if problems:
        raise InvalidRecipientsError(problems)
    return out


def load_recipients_from_sql(
    conn_id: str, sql: str, parameters: Mapping[str, Any] | Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    """Run ``sql`` on Airflow connection ``conn_id`` (any common-sql hook) and turn its rows into recipients.

    Neither the statement's rows nor its parameters are logged.
    """
    from contextlib import closing

    from airflow_provider_cartesia.warehouse import get_warehouse_hook

    hook = get_warehouse_hook(conn_id)
    with closing(hook.get_conn()) as conn, closing(conn.cursor()) as cursor:
        if parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
        if cursor.description is None:
            raise InvalidRecipientsError(["recipients_sql returned no result set; it must be a SELECT"])
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    return recipients_from_rows(columns, rows)
