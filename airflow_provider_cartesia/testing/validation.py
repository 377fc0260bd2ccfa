"""Request validation for the simulated API: each rule of cartesia-api.md §3.1/§3.5 gives a 400.

Error messages name the offending field and index but never echo a phone number or metadata.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

E164 = re.compile(r"\+[1-9][0-9]{1,14}")  # ASCII digits only: \d matches any script's digits
# RFC 3339 date-time; the offset (Z or +hh:mm) is mandatory.
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

MAX_RECIPIENTS = 5000
METADATA_MAX_BYTES = 4096
"""The simulator's default ``metadata_max_bytes`` (compact JSON, UTF-8). Cartesia documents only
"400 for oversized metadata", not the number: an assumption, see docs/simulator.md."""
SCHEDULE_HORIZON = timedelta(days=30)
REGIONS = ("US", "EU", "APAC")


class ValidationError(Exception):
    """A request the API rejects with 400; the message is the error body's ``message``."""


def parse_time(value: str, what: str) -> datetime:
    """Parse an RFC 3339 timestamp with offset, or raise :class:`ValidationError`."""
    if not isinstance(value, str) or not RFC3339.match(value):
        raise ValidationError(f"{what} must be an RFC 3339 timestamp with a timezone offset")
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationError(f"{what} is not a valid date-time") from exc
    return parsed.astimezone(timezone.utc)


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"`{key}` is required and must be a non-empty string")
    return value


def _int(body: dict[str, Any], key: str, low: int, high: int | None, default: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"`{key}` must be an integer")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValidationError(f"`{key}` must be {bounds}")
    return value


def _destinations(
    body: dict[str, Any], key: str, maximum: int, metadata_max_bytes: int | None
) -> list[tuple[str, dict[str, Any] | None]]:
    items = body.get(key)
    if not isinstance(items, list) or not items:
        raise ValidationError(f"`{key}` is required and must be a non-empty array")
    if len(items) > maximum:
        raise ValidationError(f"`{key}` has {len(items)} items; at most {maximum} are allowed")
    out: list[tuple[str, dict[str, Any] | None]] = []
    for index, item in enumerate(items):
        where = f"{key}[{index}]"
        if not isinstance(item, dict):
            raise ValidationError(f"{where} must be an object")
        number = item.get("to_number")
        if not isinstance(number, str) or not E164.fullmatch(number):
            raise ValidationError(f"{where}.to_number is missing or not an E.164 number (e.g. +14155559876)")
        metadata = item.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise ValidationError(f"{where}.metadata must be an object or null")
            size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
            if metadata_max_bytes is not None and size > metadata_max_bytes:
                raise ValidationError(
                    f"{where}.metadata is {size} bytes as JSON; at most {metadata_max_bytes} are allowed"
                )
        out.append((number, metadata))
    return out


@dataclass(frozen=True)
class BatchRequest:
    name: str
    agent_id: str
    from_number_id: str
    recipients: list[tuple[str, dict[str, Any] | None]]
    target_concurrency_limit: int
    ringing_timeout_seconds: int
    max_call_duration_minutes: int
    scheduled_at: datetime | None
    region: str | None  # None: the telephony account's region


def batch_request(
    body: Any, *, now: datetime, org_concurrency_limit: int, metadata_max_bytes: int | None = METADATA_MAX_BYTES
) -> BatchRequest:
    """Validate an ``AgentCallBatchRequest`` (B1). Whether ``region`` suits the number is the API's check."""
    if not isinstance(body, dict):
        raise ValidationError("The request body must be a JSON object")
    name = _string(body, "name")
    agent_id = _string(body, "agent_id")
    from_number_id = _string(body, "from_number_id")
    recipients = _destinations(body, "recipients", MAX_RECIPIENTS, metadata_max_bytes)
    limit = _int(body, "target_concurrency_limit", 1, None, max(1, org_concurrency_limit // 2))
    if limit > org_concurrency_limit:
        raise ValidationError(
            f"`target_concurrency_limit` ({limit}) exceeds the organization's concurrency limit "
            f"({org_concurrency_limit})"
        )
    ringing = _int(body, "ringing_timeout_seconds", 5, 80, 60)
    max_minutes = _int(body, "max_call_duration_minutes", 1, 480, 480)
    scheduled_at = None
    if body.get("scheduled_at") is not None:
        scheduled_at = parse_time(body["scheduled_at"], "`scheduled_at`")
        if scheduled_at <= now:
            raise ValidationError("`scheduled_at` must be in the future")
        if scheduled_at > now + SCHEDULE_HORIZON:
            raise ValidationError("`scheduled_at` must be within 30 days")
    region = body.get("region")
    if region is not None and region not in REGIONS:
        raise ValidationError(f"`region` must be one of {', '.join(REGIONS)}")
    return BatchRequest(
        name=name,
        agent_id=agent_id,
        from_number_id=from_number_id,
        recipients=recipients,
        target_concurrency_limit=limit,
        ringing_timeout_seconds=ringing,
        max_call_duration_minutes=max_minutes,
        scheduled_at=scheduled_at,
        region=region,
    )
