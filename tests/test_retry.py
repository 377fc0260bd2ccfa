"""The retry policy as a table: which failures are retried, and how long to wait."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from airflow_provider_cartesia.api import (
    MAX_RETRY_DELAY,
    error_class,
    parse_retry_after,
    parse_should_retry,
    retry_delay,
    should_retry,
)
from airflow_provider_cartesia.exceptions import (
    CartesiaAnswerMismatchError,
    CartesiaAPIError,
    CartesiaConfigError,
    CartesiaCreateOutcomeUnknownError,
    CartesiaResponseError,
    CartesiaResponseTooLargeError,
    CartesiaTransportError,
)

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def status_error(status: int, *, retry_after: float | None = None, header: bool | None = None) -> CartesiaAPIError:
    return error_class(status)("x", status_code=status, retry_after=retry_after, should_retry_header=header)


@pytest.mark.parametrize(
    ("error", "idempotent", "expected"),
    [
        (status_error(408), True, True),
        (status_error(429), True, True),
        (status_error(500), True, True),
        (status_error(502), True, True),
        (status_error(503), True, True),
        (status_error(504), True, True),
        (status_error(400), True, False),
        (status_error(401), True, False),
        (status_error(402), True, False),
        (status_error(403), True, False),
        (status_error(404), True, False),
        (status_error(422), True, False),
        (status_error(409), True, False),
        (status_error(409, header=True), True, True),
        (status_error(503, header=False), True, False),
        (status_error(401, header=True), True, False),
        (status_error(429), False, False),
        (status_error(500), False, False),
        (CartesiaTransportError("t", sent=True), True, True),
        (CartesiaTransportError("t", sent=False), True, True),
        (CartesiaTransportError("t", sent=False), False, True),
        (CartesiaTransportError("t", sent=True), False, False),
        (CartesiaCreateOutcomeUnknownError("t", sent=True), True, False),
        (CartesiaResponseError("bad body"), True, True),
        (CartesiaResponseError("bad body"), False, False),
        (CartesiaResponseTooLargeError("64 MiB"), True, False),
        (CartesiaAnswerMismatchError("another batch"), True, False),
        (CartesiaConfigError("no key"), True, False),
        (ValueError("a bug"), True, False),
        (KeyError("a bug"), True, False),
    ],
)
def test_should_retry(error: BaseException, idempotent: bool, expected: bool):
    assert should_retry(error, idempotent=idempotent) is expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"Retry-After": "Mon, 01 Jun 2026 12:00:20 GMT"}, 20.0),
        ({"Retry-After": "Mon, 01 Jun 2026 11:59:00 GMT"}, None),
        ({"Retry-After": "61"}, None),
        ({"Retry-After": "-1"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "NaN"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "-inf"}, None),
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after-ms": "nan", "Retry-After": "2"}, 2.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None):
    assert parse_retry_after(headers, now=NOW) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({}, None), ({"x-should-retry": "true"}, True), ({"X-Should-Retry": "False"}, False)],
)
def test_parse_should_retry(headers: dict[str, str], expected: bool | None):
    assert parse_should_retry(headers) is expected


def test_retry_delay_backs_off_exponentially_with_a_cap():
    no_jitter = [retry_delay(n, jitter=lambda: 0.0) for n in range(6)]
    assert no_jitter == [0.5, 1.0, 2.0, 4.0, 8.0, MAX_RETRY_DELAY]
    full_jitter = [retry_delay(n, jitter=lambda: 1.0) for n in range(3)]
    assert full_jitter == [0.375, 0.75, 1.5]


def test_retry_delay_prefers_the_servers_word():
    assert retry_delay(0, status_error(429, retry_after=12.0)) == 12.0
    assert retry_delay(3, status_error(429), jitter=lambda: 0.0) == 4.0
