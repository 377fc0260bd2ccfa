"""CartesiaHook at the edges: hostile connections, proxies and .netrc, oversized and endless answers,
answers about another object, and servers that never finish. Real HTTP on 127.0.0.1 throughout."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import traceback
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_cartesia.api import DEFAULT_MAX_RESPONSE_BYTES, MIN_MAX_RESPONSE_BYTES, is_loopback
from airflow_provider_cartesia.exceptions import (
    CartesiaAnswerMismatchError,
    CartesiaConfigError,
    CartesiaRateLimitError,
    CartesiaResponseError,
    CartesiaResponseTooLargeError,
    CartesiaServerError,
    CartesiaTransportError,
    is_permanent,
)
from airflow_provider_cartesia.hooks.cartesia import CartesiaHook
from airflow_provider_cartesia.links import call_batch_url
from airflow_provider_cartesia.testing import CartesiaSimulator, Fault
from tests.helpers import SleepRecorder, cartesia_connection_json

BATCH_ROUTE = "/agents/calls/batches/*"
KEY = "sk_car_SECRET_key_123"


def _conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> CartesiaHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "cartesia", **fields}))
    return CartesiaHook(conn_id)


def _sim_hook(sim: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch, conn_id: str = "c_edge", **extra: Any):  # type: ignore[no-untyped-def]
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", cartesia_connection_json(sim, **extra))
    hook = CartesiaHook(conn_id)
    hook._sleep = SleepRecorder()
    hook._asleep = SleepRecorder().asleep
    return hook


def _whole_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


# -- item 4: the plain-HTTP guard reads the URL as the HTTP libraries do ------------------------------

HOSTILE_HOSTS = [
    "http://evil.example\\@127.0.0.1",
    "http://evil.example\\@127.0.0.1:8089/",
    "https://evil.example\\@api.cartesia.ai",
    f"http://user:{KEY}@127.0.0.1:8089",
    f"https://{KEY}@api.cartesia.ai",
    "http://evil.example#@127.0.0.1",
    "http://evil.example?@127.0.0.1",
    "http://127.0.0.1 .evil.example",
    "http://127.0.0.1\t.evil.example",
    "http://127.0.0.1\n.evil.example",
    "http://127.0.0.1\x00.evil.example",
    "ht\ttp://127.0.0.1\r",
    "http://127.0.0.1\u0085.evil.example",
]


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_a_host_the_parsers_read_differently_is_refused_on_every_path(host: str, monkeypatch: pytest.MonkeyPatch):
    hook = _conn(monkeypatch, "c_hostile", host=host, password=KEY)
    with pytest.raises(CartesiaConfigError) as info:
        hook.get_call_batch("acb_1")
    assert KEY not in _whole_traceback(info.value), "the URL (which may hold a key) is never quoted back"

    hook = CartesiaHook("c_hostile")
    with pytest.raises(CartesiaConfigError):
        asyncio.run(hook.aget_call_batch("acb_1"))

    ok, message = CartesiaHook("c_hostile").test_connection()
    assert not ok and KEY not in message and "Connection 'c_hostile'" in message


def test_the_backslash_trick_would_reach_another_host() -> None:
    """Why item 4 matters: urllib reads 127.0.0.1 where urllib3 and httpx, which connect, read evil.example."""
    from urllib.parse import urlsplit

    import httpx
    from urllib3.util import parse_url

    url = "http://evil.example\\@127.0.0.1/"
    assert urlsplit(url).hostname == "127.0.0.1"
    assert parse_url(url).host == "evil.example" or httpx.URL(url).host != "127.0.0.1"


@pytest.mark.parametrize("host", ["x.localhost", "evil.localhost", "localhost.evil.example", "127.0.0.1.nip.io"])
def test_only_literal_loopback_and_localhost_count_as_loopback(host: str, monkeypatch: pytest.MonkeyPatch):
    assert not is_loopback(host)
    hook = _conn(monkeypatch, "c_name", host=f"http://{host}:8089", password=KEY)
    with pytest.raises(CartesiaConfigError, match="refusing to send the API key over plain HTTP"):
        hook.settings  # noqa: B018
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("[::1]")


# -- item 7: smaller leaks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password", [f"{KEY}\r\nX-Injected: 1", f"{KEY}\nmore", f"{KEY} {KEY}", f"{KEY}\x00", "sk_car_ü"]
)
def test_a_key_with_line_breaks_or_spaces_is_refused_without_quoting_it(
    password: str, cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch
):
    conn = json.loads(cartesia_connection_json(cartesia_simulator))
    monkeypatch.setenv("AIRFLOW_CONN_C_CRLF", json.dumps({**conn, "password": password}))
    for call in (
        lambda: CartesiaHook("c_crlf").get_call_batch("acb_1"),
        lambda: asyncio.run(CartesiaHook("c_crlf").aget_call_batch("acb_1")),
    ):
        with pytest.raises(CartesiaConfigError, match="paste the key") as info:
            call()
        assert KEY not in _whole_traceback(info.value) and "sk_car_ü" not in _whole_traceback(info.value)
    assert cartesia_simulator.requests == []


def test_a_redirect_location_is_shown_without_its_query_or_secrets(
    cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch
):
    hook = _sim_hook(cartesia_simulator, monkeypatch)
    key = cartesia_simulator.api_key
    location = f"https://evil.example/steal/{key}?key={key}&to=%2B14155550100#frag"
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(status=302, headers={"Location": location}))
    with pytest.raises(Exception) as info:
        hook.get_call_batch("acb_1")
    text = _whole_traceback(info.value)
    assert "unexpected redirect (https://evil.example/steal/" in str(info.value)
    assert key not in text and "14155550100" not in text and "frag" not in text


@pytest.mark.parametrize(
    "dashboard_url",
    ["javascript:alert(document.cookie)//", "javascript://%0aalert(1)", "http://dash.example.com", "data:text/html,x"],
)
def test_dashboard_url_must_be_https_or_loopback(
    dashboard_url: str, cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch
):
    hook = _sim_hook(cartesia_simulator, monkeypatch, dashboard_url=dashboard_url)
    with pytest.raises(CartesiaConfigError, match="extra 'dashboard_url'"):
        hook.settings  # noqa: B018
    with pytest.raises(CartesiaConfigError, match="extra 'dashboard_url'"):
        call_batch_url(dashboard_url, "acb_1")


def test_dashboard_url_over_http_to_loopback_is_allowed() -> None:
    assert call_batch_url("http://127.0.0.1:3000/", "acb_1") == "http://127.0.0.1:3000/agents/calls/batches/acb_1"


# -- item 18: the connection's extras are checked when the hook is built --------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"timeout": "nan"}, "must be a finite number"),
        ({"timeout": "inf"}, "must be a finite number"),
        ({"timeout": float("inf")}, "must be a finite number"),
        ({"timeout": True}, "must be a finite number"),
        ({"timeout": 0}, "'timeout' must be more than 0"),
        ({"timeout": -5}, "'timeout' must be more than 0"),
        ({"timeout": 1e9}, "'timeout' must be more than 0"),
        ({"max_retries": 11}, "'max_retries' must be a whole number from 0 to 10"),
        ({"max_retries": 1_000_000}, "'max_retries' must be a whole number from 0 to 10"),
        ({"max_retries": 2.5}, "'max_retries' must be a whole number from 0 to 10"),
        ({"max_retries": -1}, "'max_retries' must be a whole number from 0 to 10"),
        ({"max_retries": "nan"}, "must be a finite number"),
        ({"max_response_bytes": 1000}, "'max_response_bytes' must be a whole number of bytes"),
        ({"max_response_bytes": "lots"}, "must be a finite number"),
    ],
)
def test_unusable_extras_are_refused_when_the_hook_is_built(
    extra: dict[str, Any], message: str, cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch
):
    conn = json.loads(cartesia_connection_json(cartesia_simulator))
    conn["extra"].update(extra)
    monkeypatch.setenv("AIRFLOW_CONN_C_EXTRA", json.dumps(conn))
    with pytest.raises(CartesiaConfigError, match=message):
        CartesiaHook("c_extra").settings  # noqa: B018
    with pytest.raises(CartesiaConfigError, match=message):
        asyncio.run(CartesiaHook("c_extra").aget_call_batch("acb_1"))
    assert cartesia_simulator.requests == []


def test_extras_given_as_text_still_work(cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch):
    hook = _sim_hook(cartesia_simulator, monkeypatch, timeout="30", max_retries="2", max_response_bytes="2000000")
    assert (hook.settings.read_timeout, hook.settings.max_retries) == (30.0, 2)
    assert hook.settings.max_response_bytes == 2_000_000


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_a_non_finite_retry_after_falls_back_to_backoff(
    value: str, cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch
):
    hook = _sim_hook(cartesia_simulator, monkeypatch)
    sleeps = SleepRecorder()
    hook._sleep, hook._asleep = sleeps, sleeps.asleep
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault.rate_limited(retry_after=value))
    assert hook.get_call_batch(batch_id).id == batch_id
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault.rate_limited(retry_after=value))
    assert asyncio.run(hook.aget_call_batch(batch_id)).id == batch_id
    assert len(sleeps.waits) == 2 and all(0 < w <= 0.5 for w in sleeps.waits)


def test_retries_are_bounded_by_the_connection(cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch):
    hook = _sim_hook(cartesia_simulator, monkeypatch, max_retries=10)
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault.rate_limited(), times=50)
    with pytest.raises(CartesiaRateLimitError):
        hook.get_call_batch("acb_1")
    assert cartesia_simulator.count("GET", BATCH_ROUTE) == 11


# -- item 8: an answer about another object is never used --------------------------------------------


def test_an_answer_for_another_batch_is_refused(cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch):
    sim = cartesia_simulator
    hook = _sim_hook(sim, monkeypatch)
    asked, other = sim.seed_batch(recipients=2), sim.seed_batch(recipients=3)
    wrong = Fault(status=200, body=sim.batch(other))

    sim.inject("GET", BATCH_ROUTE, wrong)
    with pytest.raises(
        CartesiaAnswerMismatchError, match=f"asked for call batch {asked} but the answer is for"
    ) as info:
        hook.get_call_batch(asked)
    assert is_permanent(info.value), "the wait and the export stop at once instead of using it"

    sim.inject("GET", BATCH_ROUTE, wrong)
    with pytest.raises(CartesiaAnswerMismatchError):
        asyncio.run(hook.aget_call_batch(asked))

    sim.inject("POST", f"{BATCH_ROUTE}/cancel", wrong)
    with pytest.raises(CartesiaAnswerMismatchError):
        hook.cancel_call_batch(asked)

    sim.inject("POST", f"{BATCH_ROUTE}/retry", wrong)
    with pytest.raises(CartesiaAnswerMismatchError):
        hook.retry_call_batch(asked)

    assert hook.get_call_batch(asked).id == asked, "the right answer still reads"


def test_an_answer_for_another_call_is_refused(cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch):
    sim = cartesia_simulator
    hook = _sim_hook(sim, monkeypatch)
    batch_id = sim.seed_batch(recipients=2, call_seconds=(1.0, 2.0), outcomes={"completed": 1.0})
    sim.clock.advance(600)
    first, second = (call.id for call in hook.list_agent_calls(batch_id=batch_id))
    sim.inject("GET", "/agents/calls/*", Fault(status=200, body=sim.call(second)))
    with pytest.raises(CartesiaAnswerMismatchError, match=f"asked for agent call {first}"):
        hook.get_agent_call(first)
    assert hook.get_agent_call(first).id == first


# -- item 17: a list whose cursor never advances ----------------------------------------------------


def test_a_repeated_page_cursor_ends_the_list_with_an_error(
    cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch
):
    sim = cartesia_simulator
    hook = _sim_hook(sim, monkeypatch)
    batch = {k: v for k, v in sim.batch(sim.seed_batch(recipients=1)).items() if k != "recipients"}
    page = {"data": [batch], "has_more": True, "next_page": "acb_stuck"}
    sim.inject("GET", "/agents/calls/batches", Fault(status=200, body=page), times=10)
    with pytest.raises(CartesiaResponseError, match="page cursor 'acb_stuck' came back a second time"):
        list(hook.list_call_batches())
    assert sim.count("GET", "/agents/calls/batches") == 2


# -- item 15: a response's decoded size is capped on both paths -------------------------------------


def _bomb(decoded_bytes: int) -> bytes:
    return gzip.compress(b"\0" * decoded_bytes, compresslevel=9)


def test_default_cap_is_well_above_a_full_batch() -> None:
    assert DEFAULT_MAX_RESPONSE_BYTES >= 32 * 1024 * 1024 > 5 * 1.3 * 1024 * 1024


def test_a_gzip_bomb_is_stopped_early_on_both_paths(
    cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch
):
    sim = cartesia_simulator
    hook = _sim_hook(sim, monkeypatch, max_response_bytes=MIN_MAX_RESPONSE_BYTES)
    bomb = _bomb(32 * 1024 * 1024)
    assert len(bomb) < 64 * 1024
    fault = Fault(status=200, body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    sim.inject("GET", BATCH_ROUTE, fault, times=2)
    tracemalloc.start()
    try:
        with pytest.raises(CartesiaResponseTooLargeError, match="larger than the connection's max_response_bytes"):
            hook.get_call_batch("acb_1")
        with pytest.raises(CartesiaResponseTooLargeError):
            asyncio.run(hook.aget_call_batch("acb_1"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, f"decoding stopped near the 1 MiB cap, not at 32 MiB (peak {peak:,} bytes)"
    assert sim.count("GET", BATCH_ROUTE) == 2, "a body over the cap is permanent: not retried"


def test_an_uncompressed_body_over_the_cap_is_refused(
    cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch
):
    hook = _sim_hook(cartesia_simulator, monkeypatch, max_response_bytes=MIN_MAX_RESPONSE_BYTES)
    big = b'{"id": "acb_1", "pad": "' + b"x" * (2 * MIN_MAX_RESPONSE_BYTES) + b'"}'
    cartesia_simulator.inject("GET", BATCH_ROUTE, Fault(status=200, body=big), times=2)
    with pytest.raises(CartesiaResponseTooLargeError):
        hook.get_call_batch("acb_1")
    with pytest.raises(CartesiaResponseTooLargeError):
        asyncio.run(hook.aget_call_batch("acb_1"))


def test_a_gzipped_answer_reads_on_both_paths(cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch):
    sim = cartesia_simulator
    hook = _sim_hook(sim, monkeypatch)
    batch_id = sim.seed_batch(recipients=5)
    body = gzip.compress(json.dumps(sim.batch(batch_id)).encode())
    fault = Fault(status=200, body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    sim.inject("GET", BATCH_ROUTE, fault, times=2)
    batch = hook.get_call_batch(batch_id)
    assert batch.id == batch_id and batch.recipients is not None and len(batch.recipients) == 5
    assert asyncio.run(hook.aget_call_batch(batch_id)).id == batch_id
    assert sim.requests[-1].headers["accept-encoding"] == "gzip"


def test_a_huge_error_body_is_cut_not_refused(cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch):
    hook = _sim_hook(cartesia_simulator, monkeypatch, max_retries=0, max_response_bytes=MIN_MAX_RESPONSE_BYTES)
    body = _bomb(64 * 1024 * 1024)
    fault = Fault(status=503, body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
    cartesia_simulator.inject("GET", BATCH_ROUTE, fault, times=2)
    with pytest.raises(CartesiaServerError, match="HTTP 503"):
        hook.get_call_batch("acb_1")
    with pytest.raises(CartesiaServerError, match="HTTP 503"):
        asyncio.run(hook.aget_call_batch("acb_1"))


# -- item 16: an overall deadline per request -------------------------------------------------------


@pytest.fixture
def trickling_server() -> Iterator[tuple[str, list[str]]]:
    """A server on 127.0.0.1 that answers one byte at a time, far faster than any read timeout.

    ``GET /head/...`` trickles the status line and headers; any other path sends the headers at once,
    then trickles a body that never ends. Yields ``(url, paths_seen)``.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    seen: list[str] = []

    def trickle(conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            path = request.split(b" ")[1].decode()
            seen.append(path)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
            data = head + b"[" + b" " * 999_999 if path.startswith("/head/") else b" " * 1_000_000
            if not path.startswith("/head/"):
                conn.sendall(head)
            for byte in data:
                if stop.wait(0.02):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return  # the client gave up: what the test wants

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    stop.set()
    listener.close()


@pytest.mark.parametrize("prefix", ["", "/head"])
def test_a_trickling_server_cannot_hold_a_request_past_its_deadline(
    prefix: str, trickling_server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
):
    url, seen = trickling_server
    monkeypatch.setenv(
        "AIRFLOW_CONN_C_TRICKLE",
        json.dumps({"conn_type": "cartesia", "host": url + prefix, "password": KEY, "extra": {"max_retries": 0}}),
    )
    hook = CartesiaHook("c_trickle", timeout=0.3)
    assert hook.settings.deadline == pytest.approx(0.6)
    with pytest.raises(CartesiaTransportError, match=r"no complete answer within the 0.6 s deadline") as info:
        hook.get_call_batch("acb_1")
    assert info.value.sent
    with pytest.raises(CartesiaTransportError, match=r"no complete answer within the 0.6 s deadline"):
        asyncio.run(CartesiaHook("c_trickle", timeout=0.3).aget_call_batch("acb_1"))
    assert len(seen) == 2


# -- item 5: loopback never goes through a proxy; .netrc never replaces our header --------------------


@pytest.fixture
def proxy_listener() -> Iterator[tuple[str, list[bytes]]]:
    """A stand-in proxy on 127.0.0.1 that records each request line it receives, then answers 502."""
    listener = socket.create_server(("127.0.0.1", 0))
    lines: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                lines.append(data.split(b"\r\n")[0])
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", lines
    listener.close()


def _use_proxy(monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_loopback_never_goes_through_a_proxy(
    proxy_listener: tuple[str, list[bytes]], cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch
):
    proxy, lines = proxy_listener
    _use_proxy(monkeypatch, proxy)
    hook = _sim_hook(cartesia_simulator, monkeypatch)
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    assert hook.get_call_batch(batch_id).id == batch_id
    assert asyncio.run(hook.aget_call_batch(batch_id)).id == batch_id
    assert hook.test_connection()[0]
    assert lines == [], "the proxy was never contacted"


def test_remote_https_still_goes_through_the_environments_proxy(
    proxy_listener: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
):
    """HTTPS_PROXY is honoured for Cartesia itself, as documented (the key travels inside the TLS tunnel)."""
    proxy, lines = proxy_listener
    _use_proxy(monkeypatch, proxy)
    hook = _conn(monkeypatch, "c_remote", host="https://api.cartesia.example", password=KEY, extra={"max_retries": 0})
    with pytest.raises(CartesiaTransportError):
        hook.get_call_batch("acb_1")
    with pytest.raises(CartesiaTransportError):
        asyncio.run(CartesiaHook("c_remote").aget_call_batch("acb_1"))
    assert len(lines) == 2 and all(line.startswith(b"CONNECT api.cartesia.example:443 HTTP/1.") for line in lines)
    assert all(KEY.encode() not in line for line in lines)


def test_a_netrc_entry_never_replaces_the_api_key(
    tmp_path: Any, cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch
):
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login intruder password stolen\ndefault login intruder password stolen\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    hook = _sim_hook(cartesia_simulator, monkeypatch)
    batch_id = cartesia_simulator.seed_batch(recipients=1)
    assert hook.get_call_batch(batch_id).id == batch_id
    assert asyncio.run(hook.aget_call_batch(batch_id)).id == batch_id
    auths = {r.headers["authorization"] for r in cartesia_simulator.requests}
    assert auths == {f"Bearer {cartesia_simulator.api_key}"}


ARABIC_INDIC_DATE = "".join(chr(0x0660 + int(c)) if c.isdigit() else c for c in "2026-03-01")
FULLWIDTH_YEAR = "".join(chr(0xFF10 + int(c)) for c in "2026") + "-03-01"


@pytest.mark.parametrize("version", [ARABIC_INDIC_DATE, FULLWIDTH_YEAR, "2026-03-01\n"])
def test_api_version_must_be_an_ascii_date(version: str, monkeypatch: pytest.MonkeyPatch):
    """Unicode digits pass ``\\d`` but cannot go into a header; refused with the documented message."""
    hook = _conn(monkeypatch, "c_version", password=KEY, extra={"api_version": version})
    with pytest.raises(CartesiaConfigError, match="is not a date"):
        hook.settings  # noqa: B018
