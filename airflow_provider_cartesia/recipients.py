"""Recipients of a call batch: validated, loaded from SQL, and split into batches the API accepts.

Errors name a row by position and mask numbers (rules: docs/campaigns.md).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

from airflow_provider_cartesia.exceptions import CartesiaBadRequestError
from airflow_provider_cartesia.models import MAX_RECIPIENTS_PER_BATCH

# ASCII digits only: ``\d`` also matches Arabic-Indic or fullwidth digits (one person, three spellings).
E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# Cartesia documents no depth limit, but JSON encoders recurse per level (Python's fails near 1,000).
MAX_METADATA_DEPTH = 100
MAX_ERRORS_SHOWN = 5
_REFUSED_RECIPIENT = re.compile(r"\brecipients\[(\d+)\]")


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
    return f"{value[: min(4, len(value) // 2)]}…" if isinstance(value, str) else f"a {type(value).__name__}"


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
            if any(isinstance(key, str) and "\x00" in key for key in value):
                return "a metadata key holds a NUL character (\\u0000); remove it"
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and "\x00" in value:
            return "a metadata text value holds a NUL character (\\u0000); remove it"
    try:
        json.dumps(metadata, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        reason = str(exc).split(" is not JSON serializable")[0].replace("Object of type ", "a ")
        return f"metadata is not JSON ({reason})"
    return None


def _recipient_problem(item: Any, position: int, first_seen: dict[str, int], allow_duplicates: bool) -> str | None:
    """What is wrong with recipient #``position``, or None (``first_seen`` remembers each number's first row)."""
    if not isinstance(item, Mapping):
        return f"must be an object with to_number and metadata, got a {type(item).__name__}"
    if unknown := sorted(str(k) for k in item if k not in ("to_number", "metadata")):
        return f"unknown field(s) {', '.join(unknown)}; put extra fields in metadata"
    number = item.get("to_number")
    if not isinstance(number, str):
        return "to_number is missing" if number is None else f"to_number must be text, got a {type(number).__name__}"
    if not E164.fullmatch(number):
        masked = mask_number(number)
        return f"to_number is not E.164 ({masked}): + and a country code, 2 to 15 ASCII digits (0-9), no spaces"
    if item.get("metadata") is not None and (problem := _metadata_problem(item["metadata"])):
        return problem
    earlier = first_seen.setdefault(number, position)
    if earlier != position and not allow_duplicates:
        return (
            f"to_number repeats recipient #{earlier} ({mask_number(number)}); "
            "set allow_duplicate_numbers=True to dial a number more than once"
        )
    return None


def validate_recipients(items: Iterable[Any], *, allow_duplicate_numbers: bool = False) -> list[dict[str, Any]]:
    """Check every recipient (``to_number``, optional ``metadata``) and return them as the API takes them.

    :raises InvalidRecipientsError: naming each bad row by position (first few shown), or when empty.
    """
    problems: list[str] = []
    out: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    count = 0
    for count, item in enumerate(items, start=1):
        if problem := _recipient_problem(item, count, first_seen, allow_duplicate_numbers):
            problems.append(f"recipient #{count}: {problem}")
        else:
            metadata = item.get("metadata")
            out.append({"to_number": item["to_number"]} | ({} if metadata is None else {"metadata": dict(metadata)}))
    if count == 0:
        raise InvalidRecipientsError(["there are none; a batch needs at least one recipient"], 0)
    if problems:
        raise InvalidRecipientsError(problems, count)
    return out


def refused_recipient(error: Exception, count: int) -> int | None:
    """The 0-based index of the recipient a create's 400/422 names (``recipients[3].metadata ...``), or None."""
    match = _REFUSED_RECIPIENT.search(error.message or "") if isinstance(error, CartesiaBadRequestError) else None
    return int(match[1]) if match and int(match[1]) < count else None


def split_recipients(items: Sequence[Any]) -> list[list[Any]]:
    """``items`` in as few batches as the API takes, of balanced sizes, order kept (5,001: 2,501 + 2,500)."""
    parts = math.ceil(len(items) / MAX_RECIPIENTS_PER_BATCH)
    size, extra = divmod(len(items), parts or 1)
    bounds = [index * size + min(index, extra) for index in range(parts + 1)]
    return [list(items[bounds[i] : bounds[i + 1]]) for i in range(parts)]


def _json_value(column: str, value: Any) -> Any:
    """A database value as a JSON-safe metadata value (dates as ISO 8601, decimals as numbers)."""
    if value is None or isinstance(value, (bool, int, float, str, Mapping, list, tuple)):
        return value  # JSON / array columns (psycopg parses them) are checked when validated
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise ValueError(f"column {column}: a {type(value).__name__} value has no JSON form")


def _row_metadata(raw: Any, columns: Mapping[str, Any]) -> dict[str, Any] | None:
    """The metadata column's object (``raw``) plus the other ``columns`` as keys (ValueError: why not)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw).decode("utf-8", errors="replace")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except RecursionError:
            raise ValueError("the metadata column is nested too deeply to read as JSON") from None
        except ValueError:
            raise ValueError("the metadata column is not valid JSON") from None
    if raw is not None and not isinstance(raw, Mapping):
        raise ValueError(f"the metadata column must hold a JSON object, got a {type(raw).__name__}")
    if clashes := [name for name in columns if name in (raw or {})]:
        raise ValueError(f"column {clashes[0]} is also a key of the metadata column")
    return None if raw is None and not columns else {**(raw or {}), **columns}


def recipients_from_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows of a query as recipients (``metadata`` may be None), each other column a metadata key."""
    lowered = [str(c).lower() for c in columns]
    if "to_number" not in lowered:
        shown = ", ".join(str(c) for c in columns) or "none"
        raise InvalidRecipientsError([f"the query returns no to_number column (columns: {shown})"])
    for name in ("to_number", "metadata"):
        if lowered.count(name) > 1:
            raise InvalidRecipientsError([f"the query returns the {name} column more than once"])
    number_at = lowered.index("to_number")
    metadata_at = lowered.index("metadata") if "metadata" in lowered else None
    others = [(i, str(columns[i])) for i in range(len(columns)) if i not in (number_at, metadata_at)]
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    for position, row in enumerate(rows, start=1):
        try:
            values = {name: _json_value(name, row[i]) for i, name in others}
            metadata = _row_metadata(None if metadata_at is None else row[metadata_at], values)
            out.append({"to_number": row[number_at], "metadata": metadata})
        except ValueError as exc:
            problems.append(f"recipient #{position} (row {position} of the query): {exc}")
    if problems:
        raise InvalidRecipientsError(problems)
    return out


def load_recipients_from_sql(
    conn_id: str, sql: str, parameters: Mapping[str, Any] | Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    """Run ``sql`` on Airflow connection ``conn_id`` (any common-sql hook); neither rows nor parameters are logged."""
    from airflow_provider_cartesia.warehouse import get_warehouse_hook  # import cost: only a SQL source needs it

    with closing(get_warehouse_hook(conn_id).get_conn()) as conn, closing(conn.cursor()) as cursor:
        if parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
        if cursor.description is None:
            raise InvalidRecipientsError(["recipients_sql returned no result set; it must be a SELECT"])
        return recipients_from_rows([d[0] for d in cursor.description], cursor.fetchall())
