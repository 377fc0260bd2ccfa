"""Error bodies of every shape become short, readable, redacted messages."""

from __future__ import annotations

import json

import pytest

from airflow_provider_cartesia.exceptions import (
    CartesiaAPIError,
    CartesiaAuthError,
    CartesiaBadRequestError,
    CartesiaError,
    CartesiaNotFoundError,
    CartesiaPaymentRequiredError,
    CartesiaRateLimitError,
    CartesiaServerError,
    CartesiaTransportError,
    describe_error_body,
    error_class_for_status,
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
    assert error_class_for_status(status) is cls
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
