"""Error bodies of every shape become short, readable, redacted messages."""

from __future__ import annotations

import json

import pytest

from airflow_provider_cartesia.api import describe_error_body, error_class, should_retry
from airflow_provider_cartesia.exceptions import (
    CartesiaAnswerMismatchError,
    CartesiaAPIError,
    CartesiaAuthError,
    CartesiaBadRequestError,
    CartesiaCancelError,
    CartesiaConfigError,
    CartesiaCreateOutcomeUnknownError,
    CartesiaError,
    CartesiaInvalidIdError,
    CartesiaNotFoundError,
    CartesiaPaymentRequiredError,
    CartesiaRateLimitError,
    CartesiaResponseError,
    CartesiaResponseTooLargeError,
    CartesiaServerError,
    CartesiaTransportError,
    CartesiaWarehouseError,
    CartesiaWarehouseSchemaError,
    is_permanent,
    is_transient,
    redact,
)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, CartesiaBadRequestError),
        (401, CartesiaAuthError),
        (402, CartesiaPaymentRequiredError),
        (403, CartesiaAuthError),
        (404, CartesiaNotFoundError),
        (409, CartesiaAPIError),
        (422, CartesiaBadRequestError),
        (429, CartesiaRateLimitError),
        (500, CartesiaServerError),
        (599, CartesiaServerError),
    ],
)
def test_one_map_from_status_to_class(status: int, cls: type[CartesiaAPIError]):
    assert error_class(status) is cls
    assert issubclass(cls, CartesiaError)


def test_the_tree_has_one_root():
    assert issubclass(CartesiaTransportError, CartesiaAPIError)
    assert issubclass(CartesiaAPIError, CartesiaError)


def test_cartesia_json_error_body():
    body = json.dumps(
        {
            "error_code": "concurrency_limited",
            "title": "Too many concurrent requests",
            "message": "You have exceeded your plan's concurrency limit.",
            "request_id": "550e8400",
        }
    ).encode()
    parts = describe_error_body(body, "application/json")
    assert parts == {
        "error_code": "concurrency_limited",
        "title": "Too many concurrent requests",
        "message": "You have exceeded your plan's concurrency limit.",
        "request_id": "550e8400",
    }
    error = CartesiaRateLimitError(
        parts["message"] or "",
        status_code=429,
        error_code=parts["error_code"],
        title=parts["title"],
        request_id=parts["request_id"],
        method="GET",
        path="/agents/calls/batches/acb_1",
    )
    assert str(error) == (
        "GET /agents/calls/batches/acb_1 returned HTTP 429 [concurrency_limited]: Too many concurrent requests: "
        "You have exceeded your plan's concurrency limit. (request_id 550e8400)"
    )


def test_null_error_code_is_allowed():
    parts = describe_error_body(b'{"error_code": null, "title": "Bad", "message": "m", "request_id": "r"}', None)
    assert parts["error_code"] is None and parts["message"] == "m"


def test_plain_text_title_message_body():
    parts = describe_error_body(b"Not Found: no such batch", "text/plain")
    assert parts["title"] == "Not Found" and parts["message"] == "no such batch"


def test_html_body_is_reduced_to_its_title():
    html = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502</h1>" + b"x" * 5000 + b"</body></html>"
    parts = describe_error_body(html, "text/html")
    assert parts["message"] == "an HTML page instead of a Cartesia error (a proxy or wrong host?): 502 Bad Gateway"


def test_an_html_title_is_redacted_before_it_is_cut():
    secret = "proxy-key-0123456789abcdefghijklmnopqrstuvwxyz"
    html = f"<title>{'a' * 100} {secret} called +14155550100</title>".encode()
    message = describe_error_body(html, "text/html", [secret])["message"] or ""
    assert message.endswith(f"{'a' * 100} *** called <phone>")


def test_long_bodies_are_cut():
    parts = describe_error_body(b"z" * 10_000, "text/plain")
    assert parts["message"] is not None and len(parts["message"]) == 300


def test_empty_body():
    assert describe_error_body(b"", None)["message"] == "(empty body)"


def test_redact_removes_keys_secrets_and_phone_numbers():
    text = "key sk_car_abc-123 and secret s3cr3t called +14155550100 and 4155550100 on 2026-06-01"
    assert redact(text, ["s3cr3t"]) == "key sk_car_*** and secret *** called <phone> and <phone> on 2026-06-01"


def test_auth_error_says_what_to_check():
    error = CartesiaAuthError("Invalid API key", status_code=401, conn_id="cartesia_prod", method="GET", path="/x")
    assert "password field of Airflow connection 'cartesia_prod'" in str(error)


# -- one classification: permanent or transient ------------------------------------------------------


def _status(status: int, header: bool | None = None) -> CartesiaAPIError:
    return error_class(status)("x", status_code=status, should_retry_header=header)


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (_status(400), True),
        (_status(401), True),
        (_status(402), True),
        (_status(403), True),
        (_status(404), True),
        (_status(422), True),
        (_status(401, header=True), True),
        (_status(409), True),
        (_status(409, header=True), False),
        (_status(301), True),
        (_status(418), True),
        (_status(408), False),
        (_status(429), False),
        (_status(500), False),
        (_status(503), False),
        (_status(503, header=False), True),
        (CartesiaTransportError("dropped", sent=True), False),
        (CartesiaTransportError("refused", sent=False), False),
        (CartesiaCreateOutcomeUnknownError("no answer", sent=True), True),
        (CartesiaResponseError("not JSON"), False),
        (CartesiaResponseTooLargeError("over the cap"), True),
        (CartesiaAnswerMismatchError("another batch"), True),
        (CartesiaConfigError("no key"), True),
        (CartesiaInvalidIdError("../x"), True),
        (CartesiaWarehouseSchemaError("missing column"), True),
        (CartesiaWarehouseError("deadlock"), False),
        (CartesiaCancelError("some failed"), False),
    ],
)
def test_one_classification_of_permanent_and_transient(error: CartesiaError, permanent: bool):
    """The single answer read by the hook's retries, the wait's budget, the export and the cancel operator."""
    import logging

    from airflow_provider_cartesia.waiting import BatchWatch, WaitCriteria

    assert is_permanent(error) is permanent
    assert is_transient(error) is not permanent
    verdict = BatchWatch("acb_1", WaitCriteria(), logging.getLogger(__name__)).failed(error)
    assert (verdict.outcome == "error") is permanent, "the wait's failure budget asks the same question"
    if not isinstance(error, (CartesiaTransportError, CartesiaWarehouseError, CartesiaConfigError)):
        assert should_retry(error) is not permanent, "the hook retries exactly the transient ones"


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("k"), RuntimeError("x")])
def test_a_bug_is_neither_permanent_nor_transient(error: Exception):
    assert not is_permanent(error) and not is_transient(error)


def test_a_uuid_request_id_is_kept_whole_for_support():
    """Its first group can be all digits, which the phone redaction used to eat (``<phone>-e8e5-...``)."""
    body = json.dumps({"message": "Batch not found.", "request_id": "55084001-e8e5-416a-bcbd-04c340212ef7"}).encode()
    assert describe_error_body(body, "application/json")["request_id"] == "55084001-e8e5-416a-bcbd-04c340212ef7"
    body = json.dumps({"message": "x", "request_id": "+14155550100"}).encode()
    assert describe_error_body(body, "application/json")["request_id"] == "<phone>"
