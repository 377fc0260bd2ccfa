"""The one retry policy, shared by the sync hook and the async trigger path.

Two pure decisions, :func:`should_retry` and :func:`retry_delay`, over the errors of
:mod:`airflow_provider_cartesia.exceptions`; the sync and async send loops only execute them.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

from airflow_provider_cartesia.exceptions import (
    CartesiaAPIError,
    CartesiaCreateOutcomeUnknownError,
    CartesiaTransportError,
    is_transient,
)

DEFAULT_MAX_RETRIES = 4
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    Returns ``None`` when absent, unparseable, not finite (``nan``, ``inf``), negative, or above
    :data:`MAX_RETRY_AFTER` (a server asking for minutes is better served by the sensor's own poke
    interval than by a blocked call).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    seconds: float | None = None
    if "retry-after-ms" in lowered:
        try:
            seconds = float(lowered["retry-after-ms"]) / 1000
        except ValueError:
            seconds = None
        if seconds is not None and not math.isfinite(seconds):
            seconds = None
    if seconds is None and "retry-after" in lowered:
        value = lowered["retry-after"].strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds is None or not math.isfinite(seconds) or seconds < 0 or seconds > MAX_RETRY_AFTER:
        return None
    return seconds


def parse_should_retry(headers: Mapping[str, str]) -> bool | None:
    """The server's ``x-should-retry`` verdict: True, False, or None when it gave none."""
    value = next((v for k, v in headers.items() if k.lower() == "x-should-retry"), None)
    if value is None:
        return None
    return value.strip().lower() == "true"


def should_retry(error: BaseException, *, idempotent: bool = True) -> bool:
    """Whether a failed request may be sent again: a transient error (:func:`is_transient`), and safe to resend.

    A request that is not idempotent (creating a batch) is resent only when it provably never left
    this machine: a connect failure. Anything else may have reached Cartesia, and with no
    idempotency key a second create dials every recipient twice.
    """
    if isinstance(error, CartesiaCreateOutcomeUnknownError):
        return False
    if isinstance(error, CartesiaTransportError):
        return idempotent or not error.sent
    return idempotent and is_transient(error)


def retry_delay(
    retries_taken: int,
    error: BaseException | None = None,
    *,
    jitter: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``retries_taken + 1``.

    The server's Retry-After wins when it gave one; otherwise capped exponential backoff
    (0.5 s, 1 s, 2 s, ... up to 8 s) scaled by a jitter factor in (0.75, 1.0].
    """
    if isinstance(error, CartesiaAPIError) and error.retry_after is not None:
        return error.retry_after
    backoff = min(INITIAL_RETRY_DELAY * 2**retries_taken, MAX_RETRY_DELAY)
    return backoff * (1 - 0.25 * jitter())
