"""HTTP transport of the simulator: a standard-library threaded HTTP/1.1 server on loopback.

Each connection is served by its own daemon thread with keep-alive; every response carries a
``Content-Length``. A request goes: read -> clock tick -> request log -> fault lookup -> latency and
fault delay -> the API (unless the fault answers instead) -> response (or a dropped connection).
Exceptions raised by the API code are bugs of the simulator: they answer 500 and are collected in
``errors`` so the pytest fixture can fail the test.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from airflow_provider_cartesia.testing.api import ApiRequest, ApiResponse, CartesiaApi
from airflow_provider_cartesia.testing.clock import SimClock
from airflow_provider_cartesia.testing.faults import Fault, FaultPlan
from airflow_provider_cartesia.testing.recording import RecordedRequest, RequestLog

log = logging.getLogger("airflow_provider_cartesia.testing")

MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass
class ServerContext:
    """What the HTTP layer needs from the simulator."""

    api: CartesiaApi
    clock: SimClock
    faults: FaultPlan
    log: RequestLog
    errors: list[BaseException]
    latency: Callable[[], float]
    abort_event: Callable[[], threading.Event]  # set when a reset or stop cuts delayed requests short


def check_loopback(host: str) -> None:
    """Refuse any address but an IPv4 loopback one (the simulator accepts a fixed test key)."""
    try:
        loopback = ipaddress.IPv4Address("127.0.0.1" if host == "localhost" else host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the simulator only binds a loopback address such as 127.0.0.1, not {host!r}")


class _BadRequest(Exception):
    pass


class SimHTTPServer(ThreadingHTTPServer):
    # The standard library's listen backlog is 5: a client pool opening hundreds of connections at
    # once would see SYNs dropped and retried seconds later. An API behind a load balancer accepts them.
    request_queue_size = 1024
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], context: ServerContext) -> None:
        self.context = context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            if alive:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down every open keep-alive connection so no handler thread serves after stop()."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if exc is None or isinstance(exc, OSError):
            return  # the client went away: not a simulator bug
        self.context.errors.append(exc)
        log.error("simulator connection handler failed: %r", exc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffer each response (flushed once in _send) and disable Nagle: a header write followed by a
    # small body write would otherwise wait for the client's delayed ACK (~40 ms per request).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server_version = "cartesia-simulator"
    sys_version = ""
    server: SimHTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        return  # the stdlib line would include the query string; see _serve for our own log line

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    # ---- request ----------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError as exc:
                    raise _BadRequest("malformed chunked body") from exc
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    raise _BadRequest("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        if not raw.strip().isdigit() or int(raw) > MAX_BODY_BYTES:
            raise _BadRequest("invalid Content-Length")
        return self.rfile.read(int(raw))

    def _serve(self) -> None:
        ctx = self.server.context
        abort = ctx.abort_event()
        try:
            body = self._read_body()
        except _BadRequest as exc:
            self.close_connection = True
            self._send(ctx.api.error(400, str(exc)))
            return
        split = urlsplit(self.path)
        query: dict[str, str] = {}
        for key, value in parse_qsl(split.query, keep_blank_values=True):
            query.setdefault(key, value)
        headers = {k.lower(): v for k, v in self.headers.items()}
        parsed: Any | None = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        ctx.clock.tick()
        method, path = self.command, split.path
        recorded = RecordedRequest(method, path, query, headers, body, parsed, ctx.clock.now())
        ctx.log.append(recorded)
        fault = ctx.faults.take(method, path)
        wait = ctx.latency() + (fault.delay if fault else 0.0)
        if wait > 0 and abort.wait(wait):
            self._drop()
            return
        if fault is not None and fault.drop:
            log.debug("%s %s -> dropped (fault)", method, path)
            self._drop()
            return
        if fault is not None and not fault.processes_request:
            response = self._synthetic(fault)
        else:
            response = self._process(ApiRequest(method, path, query, headers, body, parsed))
            if fault is not None and fault.drop_after_processing:
                log.debug("%s %s -> processed, then dropped (fault)", method, path)
                self._drop()
                return
            if fault is not None and fault.malformed_json:
                response.body = response.body[: max(1, len(response.body) // 2)]
                response.content_type = "application/json"
        if fault is not None and fault.headers:
            response.headers.update(fault.headers)
        log.debug("%s %s -> %s", method, path, response.status)
        self._send(response)
        ctx.log.served(recorded, len(response.body))

    def _process(self, request: ApiRequest) -> ApiResponse:
        ctx = self.server.context
        try:
            return ctx.api.handle(request)
        except Exception as exc:  # a bug in the simulator: surface it to the test
            ctx.errors.append(exc)
            log.exception("simulator handler failed for %s %s", request.method, request.path)
            return ctx.api.error(500, "Internal error in the Cartesia simulator (see server_errors).")

    def _synthetic(self, fault: Fault) -> ApiResponse:
        status = fault.status if fault.status is not None else 200
        given = fault.synthetic_body()
        if given is None:
            return self.server.context.api.error(status)
        body, content_type = given
        return ApiResponse(status, body, content_type=content_type)

    # ---- response ---------------------------------------------------------------------------------

    def _send(self, response: ApiResponse) -> None:
        extra = dict(response.headers)
        content_type = next((v for k, v in extra.items() if k.lower() == "content-type"), response.content_type)
        extra = {k: v for k, v in extra.items() if k.lower() not in ("content-type", "content-length")}
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for key, value in extra.items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
            self.wfile.flush()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
