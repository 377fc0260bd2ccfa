"""CartesiaHook over real HTTP against the simulator: every method, every retry rule, every bad answer."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import time_machine

from airflow_provider_cartesia.api import DEFAULT_MAX_RETRIES
from airflow_provider_cartesia.exceptions import (
    CartesiaAPIError,
    CartesiaAuthError,
    CartesiaBadRequestError,
    CartesiaConfigError,
    CartesiaCreateOutcomeUnknownError,
    CartesiaInvalidIdError,
    CartesiaNotFoundError,
    CartesiaPaymentRequiredError,
    CartesiaRateLimitError,
    CartesiaResponseError,
    CartesiaServerError,
    CartesiaTransportError,
)
from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
from airflow_provider_cartesia.models import AgentCall, BatchStatus, CallBatch
from airflow_provider_cartesia.testing import CartesiaSimulator, Fault
from tests.helpers import SleepRecorder, cartesia_connection_json

BATCH_ROUTE = "/agents/calls/batches/*"
HELD = 60.0  # a fault delay no client timeout here outlasts; the next reset cuts the request short
GENEROUS_TIMEOUT = 30.0  # for an answer that must arrive in time, also on a busy machine (costs nothing)
RETRIED_TIMEOUT = 5.0  # both tries of one hook: the held one costs this wait (2 s was missed under load)
RECIPIENTS = [{"to_number": "+14155550100", "metadata": {"customer": "Zoë", "tier": 2}}]


def _create(hook: CartesiaHook, recipients: list[dict] | None = None) -> CallBatch:
    return hook.create_call_batch("Spring renewals", "agent_1", "pn_1", recipients or RECIPIENTS)


# -- every endpoint method -------------------------------------------------------------------------


def test_get_call_batch_returns_typed_batch_with_recipients(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    batch_id = cartesia_simulator.seed_batch(recipients=7, dispatch_interval=1.0)
    cartesia_simulator.clock.advance(3)

    batch = hook.get_call_batch(batch_id)

    assert isinstance(batch, CallBatch)
    assert batch.id == batch_id
    assert batch.status == BatchStatus.IN_PROGRESS
    assert batch.total_calls_scheduled == 7
    assert batch.recipients is not None and len(batch.recipients) == 7
    assert {r.status for r in batch.recipients} >= {"queued"}
    assert batch.created_at is not None and batch.created_at.tzinfo is not None


def test_every_request_is_authenticated_versioned_and_named(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    hook.get_call_batch(batch_id)

    (request,) = cartesia_simulator.requests
    assert request.headers["authorization"] == f"Bearer {cartesia_simulator.api_key}"
    assert request.headers["cartesia-version"] == "2026-03-01"
    assert request.headers["user-agent"].startswith("airflow-provider-cartesia/")


def test_list_call_batches_pages_lazily_and_stops_exactly(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    ids = [cartesia_simulator.seed_batch(name=f"b{i}", recipients=1) for i in range(5)]

    pages = hook.list_call_batches(page_size=2)
    assert cartesia_simulator.count("GET", "/agents/calls/batches") == 0, "listing must be lazy"
    first = next(pages)
    assert cartesia_simulator.count("GET", "/agents/calls/batches") == 1
    rest = list(pages)

    assert [b.id for b in [first, *rest]] == list(reversed(ids)), "newest first"
    assert all(b.recipients is None for b in rest)
    assert cartesia_simulator.count("GET", "/agents/calls/batches") == 3  # 2 + 2 + 1, no empty page
    queries = [r.query for r in cartesia_simulator.requests]
    assert queries[0] == {"limit": "2"}
    assert queries[1]["starting_after"] == ids[3]


def test_list_call_batches_exact_multiple_makes_no_extra_request(
    hook: CartesiaHook, cartesia_simulator: CartesiaSimulator
):
    for i in range(4):
        cartesia_simulator.seed_batch(name=f"b{i}", recipients=1)
    assert len(list(hook.list_call_batches(page_size=2))) == 4
    assert cartesia_simulator.count("GET", "/agents/calls/batches") == 2


def test_list_call_batches_filters_by_agent(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    mine = cartesia_simulator.seed_batch(agent_id="agent_a", recipients=1)
    cartesia_simulator.seed_batch(agent_id="agent_b", recipients=1)
    assert [b.id for b in hook.list_call_batches(agent_id="agent_a")] == [mine]
    assert cartesia_simulator.requests[0].query == {"agent_id": "agent_a", "limit": "100"}


def test_page_size_out_of_range_is_refused_before_any_request(
    hook: CartesiaHook, cartesia_simulator: CartesiaSimulator
):
    with pytest.raises(ValueError, match="page_size"):
        hook.list_call_batches(page_size=101)
    assert cartesia_simulator.requests == []


def test_create_call_batch_posts_once_and_returns_the_batch(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    when = cartesia_simulator.clock.now() + timedelta(hours=2)
    batch = hook.create_call_batch(
        "Spring renewals", "agent_1", "pn_1", RECIPIENTS, scheduled_at=when, target_concurrency_limit=3
    )

    assert batch.status == BatchStatus.PENDING
    assert batch.total_calls_scheduled == 1
    assert batch.scheduled_at == when
    (request,) = cartesia_simulator.requests
    assert request.method == "POST"
    assert request.json["recipients"] == RECIPIENTS
    assert request.json["scheduled_at"] == when.isoformat().replace("+00:00", "Z")
    assert "ringing_timeout_seconds" not in request.json, "unset options are not sent"


def test_create_refuses_naive_datetimes_and_bad_sizes_before_sending(
    hook: CartesiaHook, cartesia_simulator: CartesiaSimulator
):
    with pytest.raises(ValueError, match="timezone-aware"):
        hook.create_call_batch("x", "agent_1", "pn_1", RECIPIENTS, scheduled_at=datetime(2030, 1, 1))
    with pytest.raises(CartesiaBadRequestError, match="1 to 5,000 recipients, got 0"):
        hook.create_call_batch("x", "agent_1", "pn_1", [])
    assert cartesia_simulator.requests == []


def test_create_validation_error_from_the_api_is_not_retried(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    with pytest.raises(CartesiaBadRequestError) as info:
        _create(hook, [{"to_number": "4155550100"}])
    assert info.value.status_code == 400
    assert "4155550100" not in str(info.value), "phone numbers never reach exception text"
    assert cartesia_simulator.count("POST", "/agents/calls/batches") == 1


def test_cancel_and_retry_call_batch(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    batch_id = cartesia_simulator.seed_batch(recipients=5, outcomes={"no_answer": 1.0}, dispatch_interval=1)
    cartesia_simulator.clock.advance(10_000)
    retried = hook.retry_call_batch(batch_id)
    assert retried.retry_count == 1
    assert retried.status == BatchStatus.IN_PROGRESS

    other = cartesia_simulator.seed_batch(recipients=5, dispatch_interval=60)
    cancelled = hook.cancel_call_batch(other)
    assert cancelled.status == BatchStatus.CANCELLED
    assert hook.cancel_call_batch(other).status == BatchStatus.CANCELLED, "cancel is idempotent"

    with pytest.raises(CartesiaBadRequestError):
        hook.retry_call_batch(other)


@pytest.mark.parametrize("fault", [Fault.server_error(503), Fault(drop_after_processing=True)])
def test_retry_call_batch_redials_so_it_is_sent_once(
    fault: Fault, hook: CartesiaHook, cartesia_simulator: CartesiaSimulator, sleeps: SleepRecorder
):
    batch_id = cartesia_simulator.seed_batch(recipients=3, outcomes={"no_answer": 1.0}, dispatch_interval=1)
    cartesia_simulator.clock.advance(10_000)
    retry_route = "/agents/calls/batches/*/retry"
    cartesia_simulator.inject("POST", retry_route, fault)
    with pytest.raises(CartesiaAPIError) as info:
        hook.retry_call_batch(batch_id)
    assert cartesia_simulator.count("POST", retry_route) == 1
    assert sleeps.waits == []
    if fault.drop_after_processing:
        assert isinstance(info.value, CartesiaCreateOutcomeUnknownError)
        assert "check its retry_count" in str(info.value)
        assert cartesia_simulator.batch(batch_id)["retry_count"] == 1


def test_list_agent_calls_and_get_agent_call(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    batch_id = cartesia_simulator.seed_batch(recipients=5, outcomes={"completed": 1.0}, dispatch_interval=1)
    cartesia_simulator.clock.advance(10_000)

    calls = list(hook.list_agent_calls(batch_id=batch_id, page_size=2))
    assert len(calls) == 5
    assert all(isinstance(c, AgentCall) and c.duration_seconds and c.duration_seconds > 0 for c in calls)
    assert all(c.transcript is None for c in calls)
    assert cartesia_simulator.count("GET", "/agents/calls") == 3

    with_transcript = list(hook.list_agent_calls(batch_id=batch_id, expand_transcript=True))
    assert all(c.transcript for c in with_transcript)

    one = hook.get_agent_call(calls[0].id)
    assert one.id == calls[0].id and one.status == "completed"


def test_list_agent_calls_needs_a_filter(hook: CartesiaHook):
    with pytest.raises(ValueError, match="batch_id or agent_id"):
        hook.list_agent_calls()


# -- retries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried_with_backoff(
    status: int, hook: CartesiaHook, cartesia_simulator: CartesiaSimulator, sleeps: SleepRecorder
):
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(status=status), times=2)

    assert hook.get_call_batch(batch_id).id == batch_id
    assert cartesia_simulator.count("GET", BATCH_ROUTE) == 3
    assert len(sleeps.waits) == 2
    assert 0.375 <= sleeps.waits[0] <= 0.5 and 0.75 <= sleeps.waits[1] <= 1.0, "exponential backoff with jitter"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, CartesiaBadRequestError),
        (401, CartesiaAuthError),
        (402, CartesiaPaymentRequiredError),
        (403, CartesiaAuthError),
        (404, CartesiaNotFoundError),
        (422, CartesiaBadRequestError),
    ],
)
def test_client_errors_are_never_retried(
    status: int,
    error: type[CartesiaAPIError],
    hook: CartesiaHook,
    cartesia_simulator: CartesiaSimulator,
    sleeps: SleepRecorder,
):
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(status=status, headers={"x-should-retry": "true"}))
    with pytest.raises(error) as info:
        hook.get_call_batch("acb_1")
    assert info.value.status_code == status
    assert info.value.request_id, "the API's request id is kept for support"
    assert cartesia_simulator.count("GET", BATCH_ROUTE) == 1
    assert sleeps.waits == []


def test_retry_after_seconds_is_honoured(
    hook: CartesiaHook, cartesia_simulator: CartesiaSimulator, sleeps: SleepRecorder
):
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault.rate_limited(retry_after="7"))
    hook.get_call_batch(batch_id)
    assert sleeps.waits == [7.0]


def test_retry_after_http_date_is_honoured(
    hook: CartesiaHook, cartesia_simulator: CartesiaSimulator, sleeps: SleepRecorder
):
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    with time_machine.travel(datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc), tick=False):
        when = format_datetime(datetime(2026, 6, 1, 12, 0, 12, tzinfo=timezone.utc), usegmt=True)
        cartesia_simulator.inject("GET", BATCH_ROUTE, Fault.rate_limited(retry_after=when))
        hook.get_call_batch(batch_id)
    assert sleeps.waits == [12.0]


def test_retry_after_beyond_the_cap_falls_back_to_backoff(
    hook: CartesiaHook, cartesia_simulator: CartesiaSimulator, sleeps: SleepRecorder
):
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault.rate_limited(retry_after="3600"))
    hook.get_call_batch(batch_id)
    assert len(sleeps.waits) == 1 and sleeps.waits[0] <= 0.5


def test_x_should_retry_false_stops_a_retryable_status(
    hook: CartesiaHook, cartesia_simulator: CartesiaSimulator, sleeps: SleepRecorder
):
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(status=503, headers={"x-should-retry": "false"}))
    with pytest.raises(CartesiaServerError):
        hook.get_call_batch("acb_1")
    assert cartesia_simulator.count("GET", BATCH_ROUTE) == 1


def test_x_should_retry_true_retries_a_conflict(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(status=409, headers={"x-should-retry": "true"}))
    assert hook.get_call_batch(batch_id).id == batch_id
    assert cartesia_simulator.count("GET", BATCH_ROUTE) == 2


def test_retries_are_bounded(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator, sleeps: SleepRecorder):
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault.rate_limited(), times=50)
    with pytest.raises(CartesiaRateLimitError) as info:
        hook.get_call_batch("acb_1")
    assert info.value.status_code == 429
    assert cartesia_simulator.count("GET", BATCH_ROUTE) == DEFAULT_MAX_RETRIES + 1
    assert len(sleeps.waits) == DEFAULT_MAX_RETRIES
    assert max(sleeps.waits) <= 8.0


def test_max_retries_comes_from_the_connection(
    cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch, sleeps: SleepRecorder
):
    monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_ONE", cartesia_connection_json(cartesia_simulator, max_retries=1))
    hook = CartesiaHook("cartesia_one")
    hook._sleep = sleeps
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault.server_error(500), times=5)
    with pytest.raises(CartesiaServerError):
        hook.get_call_batch("acb_1")
    assert cartesia_simulator.count("GET", BATCH_ROUTE) == 2


def test_read_timeout_is_retried_then_reported(cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str):
    # A held request (HELD s, cut short when the simulator resets) times out whatever the load; an
    # answer that must come in time gets a timeout a busy machine meets.
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    hook = CartesiaHook(cartesia_conn_id, timeout=RETRIED_TIMEOUT, max_retries=1)
    hook._sleep = SleepRecorder()
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(delay=HELD), times=1)
    assert hook.get_call_batch(batch_id).id == batch_id  # the second try is answered
    assert cartesia_simulator.count("GET", BATCH_ROUTE) == 2

    hook = CartesiaHook(cartesia_conn_id, timeout=0.2, max_retries=1)
    hook._sleep = SleepRecorder()
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(delay=HELD), times=2)
    with pytest.raises(CartesiaTransportError, match=r"no response within the 0.2 s read timeout") as info:
        hook.get_call_batch(batch_id)
    assert info.value.status_code is None and info.value.sent
    assert cartesia_simulator.count("GET", BATCH_ROUTE) == 4


def test_dropped_connection_on_a_read_is_retried(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(drop=True))
    assert hook.get_call_batch(batch_id).id == batch_id
    assert cartesia_simulator.count("GET", BATCH_ROUTE) == 2


@pytest.mark.parametrize("fault", [Fault(drop=True), Fault(drop_after_processing=True)])
def test_create_is_never_resent_once_it_may_have_arrived(
    fault: Fault, hook: CartesiaHook, cartesia_simulator: CartesiaSimulator, sleeps: SleepRecorder
):
    cartesia_simulator.inject("POST", "/agents/calls/batches", fault)
    with pytest.raises(CartesiaCreateOutcomeUnknownError, match="would dial every recipient twice"):
        _create(hook)
    assert cartesia_simulator.count("POST", "/agents/calls/batches") == 1
    assert sleeps.waits == []
    expected = 1 if fault.drop_after_processing else 0
    assert cartesia_simulator.batch_count() == expected


@pytest.mark.parametrize("status", [429, 500, 503])
def test_create_is_not_retried_on_server_errors(
    status: int, hook: CartesiaHook, cartesia_simulator: CartesiaSimulator, sleeps: SleepRecorder
):
    cartesia_simulator.inject("POST", "/agents/calls/batches", Fault(status=status))
    with pytest.raises(CartesiaAPIError):
        _create(hook)
    assert cartesia_simulator.count("POST", "/agents/calls/batches") == 1
    assert sleeps.waits == []


def test_create_is_retried_when_it_provably_never_left(
    monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int, sleeps: SleepRecorder
):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CARTESIA_CLOSED",
        json.dumps({"conn_type": "cartesia", "host": f"http://127.0.0.1:{unused_tcp_port}", "password": "sk_car_k"}),
    )
    hook = CartesiaHook("cartesia_closed", max_retries=2)
    hook._sleep = sleeps
    with pytest.raises(CartesiaTransportError, match="could not connect") as info:
        _create(hook)
    assert not isinstance(info.value, CartesiaCreateOutcomeUnknownError)
    assert info.value.sent is False
    assert len(sleeps.waits) == 2, "a connect failure never reached Cartesia, so a create may be resent"


@pytest.fixture
def tls_server(tmp_path):  # type: ignore[no-untyped-def]
    """An HTTPS server on 127.0.0.1 that reads each request whole, then answers with bytes that are not TLS.

    Its self-signed certificate is written to ``tmp_path / "cert.pem"``. Yields ``(url, request_lines)``.
    """
    import ipaddress
    import socket
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    requests_seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return  # closed at teardown
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(
                        next(
                            (h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")),
                            0,
                        )
                    )
                    while len(body) < length:
                        body += conn.recv(65536)
                    requests_seen.append(head.split(b"\r\n")[0])
                    socket.socket.send(conn, b"\x00 not a TLS record \r\n" * 4)  # past TLS, on the raw socket
            except (OSError, ssl.SSLError):
                continue  # a client that refused our certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}", requests_seen
    listener.close()


def _tls_hook(url: str, monkeypatch: pytest.MonkeyPatch, sleeps: SleepRecorder) -> CartesiaHook:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CARTESIA_TLS", json.dumps({"conn_type": "cartesia", "host": url, "password": "sk_car_k"})
    )
    hook = CartesiaHook("cartesia_tls", max_retries=2)
    hook._sleep = sleeps
    return hook


def test_create_is_never_resent_after_a_tls_error_in_the_answer(
    tls_server, tmp_path, monkeypatch: pytest.MonkeyPatch, sleeps: SleepRecorder
):
    """The handshake succeeded and the request was sent; the answer is not TLS. Cartesia may have the batch."""
    url, seen = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "cert.pem"))
    hook = _tls_hook(url, monkeypatch, sleeps)
    with pytest.raises(CartesiaCreateOutcomeUnknownError, match="TLS error") as info:
        _create(hook)
    assert info.value.sent
    assert seen == [b"POST /agents/calls/batches HTTP/1.1"] and sleeps.waits == []
    with pytest.raises(CartesiaTransportError, match="TLS error"):
        hook.get_call_batch("acb_1")
    assert len(seen) == 1 + 3, "a read is retried as usual"


def test_create_is_retried_when_the_certificate_is_refused(
    tls_server, monkeypatch: pytest.MonkeyPatch, sleeps: SleepRecorder
):
    """An untrusted certificate ends the handshake before the request is written: nothing left this machine."""
    url, seen = tls_server
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    hook = _tls_hook(url, monkeypatch, sleeps)
    with pytest.raises(CartesiaTransportError, match=r"TLS handshake failed \(certificate refused\)") as info:
        _create(hook)
    assert not isinstance(info.value, CartesiaCreateOutcomeUnknownError) and info.value.sent is False
    assert seen == [] and len(sleeps.waits) == 2


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- bad answers -----------------------------------------------------------------------------------


def test_malformed_json_names_the_endpoint(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    batch_id = cartesia_simulator.seed_batch(recipients=3)
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(malformed_json=True))
    with pytest.raises(CartesiaResponseError, match=rf"GET /agents/calls/batches/{batch_id} .*not valid JSON"):
        hook.get_call_batch(batch_id)


def test_body_that_does_not_fit_the_model_says_what_is_wrong(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    body = {"id": "acb_1", "total_calls_scheduled": "many", "recipients": [{"to_number": "+14155550100"}]}
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(status=200, body=body))
    with pytest.raises(CartesiaResponseError) as info:
        hook.get_call_batch("acb_1")
    text = str(info.value)
    assert "does not fit CallBatch" in text
    assert "total_calls_scheduled" in text and "recipients.0.id" in text
    assert "+14155550100" not in text and "many" not in text, "values are never echoed"


def test_html_proxy_page_gives_a_readable_error(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault.html(502), times=10)
    with pytest.raises(CartesiaServerError) as info:
        hook.get_call_batch("acb_1")
    text = str(info.value)
    assert "HTML page" in text and "502" in text
    assert "<html>" not in text and len(text) < 500


def test_plain_text_error_body_is_readable(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(status=400, body="Bad Request: version not supported"))
    with pytest.raises(CartesiaBadRequestError, match="Bad Request: version not supported"):
        hook.get_call_batch("acb_1")


def test_unknown_statuses_and_fields_parse_and_are_kept(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    batch_id = cartesia_simulator.seed_batch(recipients=2)
    body = cartesia_simulator.batch(batch_id)
    body["status"] = "paused_by_carrier"
    body["carrier_region"] = "us-west"
    body["recipients"][0]["status"] = "voicemail_left"
    body["recipients"][0]["sentiment"] = {"score": 0.4}
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(status=200, body=body))

    batch = hook.get_call_batch(batch_id)

    assert batch.status == "paused_by_carrier" and not batch.is_terminal
    assert batch.model_extra == {"carrier_region": "us-west"}
    assert batch.recipients is not None
    assert batch.recipients[0].status == "voicemail_left"
    assert batch.recipients[0].model_extra == {"sentiment": {"score": 0.4}}


# -- ids, connection, security ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id", ["../x", "a/b", "a?b", "a#b", "", " acb", "..", "acb_1/../../agents", "%2e%2e", "a b"]
)
def test_hostile_ids_never_reach_another_route(bad_id: str, hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    for call in (hook.get_call_batch, hook.cancel_call_batch, hook.retry_call_batch, hook.get_agent_call):
        with pytest.raises(CartesiaInvalidIdError):
            call(bad_id)
    with pytest.raises(CartesiaInvalidIdError):
        hook.list_agent_calls(batch_id=bad_id)
    assert cartesia_simulator.requests == []


def test_wrong_key_names_the_connection(cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch):
    conn = json.loads(cartesia_connection_json(cartesia_simulator))
    conn["password"] = "sk_car_wrong_key_123"
    monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_WRONG", json.dumps(conn))
    with pytest.raises(CartesiaAuthError, match="password field of Airflow connection 'cartesia_wrong'") as info:
        CartesiaHook("cartesia_wrong").get_call_batch("acb_1")
    assert "sk_car_wrong_key_123" not in str(info.value)


@pytest.mark.parametrize(
    ("conn", "message"),
    [
        ({"conn_type": "cartesia", "host": "https://api.cartesia.ai"}, "has no API key"),
        ({"conn_type": "cartesia", "host": "http://api.cartesia.ai", "password": "sk_car_k"}, "plain HTTP"),
        ({"conn_type": "cartesia", "host": "http://10.0.0.5:8089", "password": "sk_car_k"}, "plain HTTP"),
        ({"conn_type": "cartesia", "password": "sk_car_k", "extra": {"api_version": "latest"}}, "not a date"),
        ({"conn_type": "cartesia", "password": "sk_car_k", "extra": {"timeout": "soon"}}, "must be a finite number"),
        ({"conn_type": "cartesia", "host": "ftp://x", "password": "sk_car_k"}, "is not a URL"),
    ],
)
def test_unusable_connections_are_refused_before_any_request(conn: dict, message: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_BAD", json.dumps(conn))
    with pytest.raises(CartesiaConfigError, match=message) as info:
        CartesiaHook("cartesia_bad").get_call_batch("acb_1")
    assert "sk_car_k" not in str(info.value)


@pytest.mark.parametrize(
    ("host", "port", "base_url"),
    [
        (None, None, "https://api.cartesia.ai"),
        ("api.cartesia.ai", None, "https://api.cartesia.ai"),
        ("https://eu.example.com/", None, "https://eu.example.com"),
        ("127.0.0.1", 8089, "http://127.0.0.1:8089"),
        ("localhost:8089", None, "http://localhost:8089"),
        ("http://[::1]:8089", None, "http://[::1]:8089"),
    ],
)
def test_base_url_from_host_field(host: str | None, port: int | None, base_url: str, monkeypatch: pytest.MonkeyPatch):
    conn = {"conn_type": "cartesia", "host": host, "port": port, "password": "sk_car_k"}
    monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_URL", json.dumps(conn))
    assert CartesiaHook("cartesia_url").settings.base_url == base_url


def test_uri_form_connection(cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch):
    from urllib.parse import quote

    key, host = quote(cartesia_simulator.api_key, safe=""), quote(cartesia_simulator.url, safe="")
    uri = f"cartesia://:{key}@{host}?api_version=2026-08-14"
    monkeypatch.setenv("AIRFLOW_CONN_CARTESIA_URI", uri)
    hook = CartesiaHook("cartesia_uri")
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    assert hook.get_call_batch(batch_id).id == batch_id
    assert cartesia_simulator.requests[0].headers["cartesia-version"] == "2026-08-14"


def test_connection_settings_never_show_the_key(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    assert cartesia_simulator.api_key not in repr(hook.settings)


def test_test_connection_success(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    ok, message = hook.test_connection()
    assert ok, message
    assert cartesia_simulator.url in message
    (request,) = cartesia_simulator.requests
    assert (request.method, request.path, request.query) == ("GET", "/agents/calls/batches", {"limit": "1"})


def test_test_connection_explains_each_failure(cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch):
    conn = json.loads(cartesia_connection_json(cartesia_simulator))
    monkeypatch.setenv("AIRFLOW_CONN_C_KEY", json.dumps({**conn, "password": "sk_car_nope"}))
    monkeypatch.setenv("AIRFLOW_CONN_C_VERSION", json.dumps({**conn, "extra": {"api_version": "2020-01-01"}}))
    monkeypatch.setenv("AIRFLOW_CONN_C_HOST", json.dumps({**conn, "host": "http://127.0.0.1:9"}))

    ok, message = CartesiaHook("c_key").test_connection()
    assert not ok and "refused the API key" in message and "c_key" in message and "sk_car_nope" not in message
    ok, message = CartesiaHook("c_version").test_connection()
    assert not ok and "api_version" in message and "2026-03-01" in message
    hook = CartesiaHook("c_host", max_retries=0)
    ok, message = hook.test_connection()
    assert not ok and "Could not reach Cartesia" in message and "127.0.0.1:9" in message


# -- the async path (triggers) ---------------------------------------------------------------------


def test_async_get_call_batch_shares_the_retry_policy(
    hook: CartesiaHook, cartesia_simulator: CartesiaSimulator, sleeps: SleepRecorder
):
    batch_id = cartesia_simulator.seed_batch(recipients=4)
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault.rate_limited(retry_after="2"))
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(drop=True))
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault.html(503))

    batch = asyncio.run(hook.aget_call_batch(batch_id))

    assert batch.id == batch_id and batch.recipients is not None and len(batch.recipients) == 4
    assert cartesia_simulator.count("GET", BATCH_ROUTE) == 4
    assert sleeps.waits[0] == 2.0 and len(sleeps.waits) == 3


@pytest.mark.parametrize(("status", "error"), [(401, CartesiaAuthError), (404, CartesiaNotFoundError)])
def test_async_client_errors_are_not_retried(
    status: int, error: type[CartesiaAPIError], hook: CartesiaHook, cartesia_simulator: CartesiaSimulator
):
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(status=status))
    with pytest.raises(error):
        asyncio.run(hook.aget_call_batch("acb_1"))
    assert cartesia_simulator.count("GET", BATCH_ROUTE) == 1


def test_async_timeout_and_malformed_body(cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str):
    hook = CartesiaHook(cartesia_conn_id, timeout=0.2, max_retries=0)
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(delay=HELD))
    with pytest.raises(CartesiaTransportError, match="read timeout"):
        asyncio.run(hook.aget_call_batch("acb_1"))
    hook = CartesiaHook(cartesia_conn_id, timeout=GENEROUS_TIMEOUT, max_retries=0)
    batch_id = cartesia_simulator.seed_batch(recipients=2)
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(malformed_json=True))
    with pytest.raises(CartesiaResponseError, match="not valid JSON"):
        asyncio.run(hook.aget_call_batch(batch_id))


def test_async_clients_of_closed_event_loops_are_dropped(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    from airflow_provider_cartesia.hooks import cartesia as module

    batch_id = cartesia_simulator.seed_batch(recipients=1)
    for _ in range(3):
        asyncio.run(hook.aget_call_batch(batch_id))
    assert len(module._ASYNC_CLIENTS) == 1, "only the last loop's client remains"


def test_async_hostile_id_is_refused(hook: CartesiaHook, cartesia_simulator: CartesiaSimulator):
    with pytest.raises(CartesiaInvalidIdError):
        asyncio.run(hook.aget_call_batch("../agents"))
    assert cartesia_simulator.requests == []
