"""CartesiaHook: the one place that speaks HTTP to Cartesia, through :meth:`CartesiaHook._send` (requests, in
tasks) or :meth:`CartesiaHook._asend` (httpx, in triggers); everything else is :mod:`airflow_provider_cartesia.api`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_cartesia.api import (
    CONN_TYPE,
    DEFAULT_CONN_ID,
    READ_CHUNK_BYTES,
    SUPPORTED_API_VERSIONS,
    ApiCall,
    ApiSettings,
    BodyReader,
    ModelT,
    api_path,
    check_answer_id,
    parse_model,
    retry_delay,
    settings_from_connection,
    should_retry,
)
from airflow_provider_cartesia.compat import BaseHook
from airflow_provider_cartesia.exceptions import (
    CartesiaAuthError,
    CartesiaBadRequestError,
    CartesiaError,
    CartesiaResponseError,
    CartesiaTransportError,
    redact,
)
from airflow_provider_cartesia.models import (
    MAX_RECIPIENTS_PER_BATCH,
    AgentCall,
    AgentCallPage,
    CallBatch,
    CallBatchPage,
    CallBatchStatuses,
)
from airflow_provider_cartesia.polling import MAX_LIST_PAGES, SYNC_LIST_PAGE_SIZE, ListScan

if TYPE_CHECKING:
    import httpx
    import requests

BATCHES = "/agents/calls/batches"
BATCH = "/agents/calls/batches/{batch_id}"
BATCH_CANCEL = "/agents/calls/batches/{batch_id}/cancel"
BATCH_RETRY = "/agents/calls/batches/{batch_id}/retry"
CALLS = "/agents/calls"
CALL = "/agents/calls/{call_id}"
MAX_PAGE_SIZE = 100
ASYNC_CLIENTS = 16
ASYNC_CLIENT_CONNECTIONS = 8
"""Per event loop, up to 16 small httpx clients (per direct/proxied) taken in turn: httpcore's pool work grows
with connections x queued requests (docs/benchmarks.md)."""

_ASYNC_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[bool, int], httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary()
)
_turns = itertools.count()


class CartesiaHook(BaseHook):
    """Talk to the Cartesia API: call batches and agent calls, typed, authenticated and retried.

    Reads are retried on 408, 429, 5xx and network errors, with capped exponential backoff that honours
    ``Retry-After``; a create or retry of a batch is never resent once it may have reached Cartesia.

    :param cartesia_conn_id: Airflow connection of type ``cartesia`` (see docs/connection.md).
    :param timeout: read timeout in seconds, overriding the connection's ``timeout`` extra.
    :param max_retries: retries per request, overriding the connection's ``max_retries`` extra.
    """

    conn_name_attr = "cartesia_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Cartesia"

    def __init__(
        self,
        cartesia_conn_id: str = DEFAULT_CONN_ID,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cartesia_conn_id = cartesia_conn_id
        self.timeout = timeout
        self.max_retries = max_retries
        self._sleep: Callable[[float], None] = time.sleep
        self._asleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._settings: ApiSettings | None = None

    @property
    def settings(self) -> ApiSettings:
        """The connection, validated and resolved (looked up once per hook)."""
        if self._settings is None:
            conn = self.get_connection(self.cartesia_conn_id)
            self._settings = settings_from_connection(conn, timeout=self.timeout, max_retries=self.max_retries)
        return self._settings

    async def asettings(self) -> ApiSettings:
        """Like :attr:`settings`, looked up with Airflow's async connection API (safe in a triggerer)."""
        if self._settings is None:
            conn = await self.aget_connection(self.cartesia_conn_id)
            # Off the event loop: checking the URL imports and runs the HTTP libraries' parsers.
            self._settings = await asyncio.to_thread(
                settings_from_connection, conn, timeout=self.timeout, max_retries=self.max_retries
            )
        return self._settings

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session for every request of this hook; its connections obey :class:`_Deadline`."""
        import requests  # about 70 ms that DAG parsing never needs

        session = requests.Session()
        session.auth = _no_netrc  # trust_env stays: HTTPS_PROXY and REQUESTS_CA_BUNDLE, but never .netrc
        adapter = _make_deadline_adapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    # -- the request funnel ----------------------------------------------------------------------

    def _retry_policy(self, call: ApiCall) -> dict[str, Any]:
        """Tenacity's arguments for ``call`` in both funnels: the policy is :mod:`airflow_provider_cartesia.api`'s."""
        from tenacity import retry_if_exception, stop_after_attempt  # only when a request is sent

        def wait(state: Any) -> float:
            return retry_delay(state.attempt_number - 1, state.outcome.exception())

        def log(state: Any) -> None:
            self.log.warning(
                "Retrying in %.1f s (retry %d of %d): %s",
                state.next_action.sleep,
                state.attempt_number,
                call.settings.max_retries,
                state.outcome.exception(),
            )

        return {
            "stop": stop_after_attempt(call.settings.max_retries + 1),
            "retry": retry_if_exception(lambda exc: should_retry(exc, idempotent=call.idempotent)),
            "wait": wait,
            "before_sleep": log,
            "reraise": True,
        }

    def _result(self, reader: BodyReader, started: float) -> bytes:
        call = reader.call
        self.log.debug(
            "%s %s -> %s in %.0f ms", call.method, call.path, reader.status_code, 1000 * (time.monotonic() - started)
        )
        return reader.result()

    def _send(self, call: ApiCall) -> bytes:
        from tenacity import Retrying

        return Retrying(sleep=self._sleep, **self._retry_policy(call))(self._send_once, call)

    def _send_once(self, call: ApiCall) -> bytes:
        import requests  # with the session above
        from urllib3.exceptions import HTTPError as Urllib3Error

        settings = call.settings
        started = time.monotonic()
        deadline = _Deadline(settings.deadline)
        try:
            with deadline:
                response = self.session.request(
                    call.method,
                    call.url,
                    params=call.query,
                    data=call.data,
                    headers=call.headers(),
                    timeout=(settings.connect_timeout, settings.read_timeout),
                    allow_redirects=False,
                    stream=True,
                    proxies=_NO_PROXIES if settings.direct else None,  # type: ignore[arg-type]
                )
                with response:
                    reader = BodyReader(call, response.status_code, response.headers)
                    for chunk in response.raw.stream(READ_CHUNK_BYTES, decode_content=False):
                        if reader.feed(chunk):
                            break
        except (requests.exceptions.RequestException, Urllib3Error, OSError) as exc:
            raise (call.deadline_passed(exc) if deadline.expired else _requests_failure(call, exc)) from exc
        if deadline.expired:  # cut off while reading the headers, which http.client may take as their end
            raise call.deadline_passed(TimeoutError())
        return self._result(reader, started)

    async def _asend(self, call: ApiCall) -> bytes:
        from tenacity import AsyncRetrying

        return await AsyncRetrying(sleep=self._asleep, **self._retry_policy(call))(self._asend_once, call)

    async def _asend_once(self, call: ApiCall) -> bytes:
        import httpx  # imported by airflow already; here for the exception classes

        settings = call.settings
        started = time.monotonic()

        async def exchange() -> BodyReader:
            async with _async_client(settings.direct).stream(
                call.method,
                call.url,
                params=call.query,
                headers=call.headers(),
                timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            ) as response:
                reader = BodyReader(call, response.status_code, response.headers)
                async for chunk in response.aiter_raw(READ_CHUNK_BYTES):
                    if reader.feed(chunk):
                        break
            return reader

        try:
            reader = await asyncio.wait_for(exchange(), settings.deadline)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise call.transport_error(exc, "could not connect", sent=False) from exc
        except httpx.TimeoutException as exc:
            raise call.read_timeout(exc) from exc
        except asyncio.TimeoutError as exc:
            raise call.deadline_passed(exc) from exc
        except httpx.HTTPError as exc:
            raise call.transport_error(exc, "the connection dropped before a response arrived") from exc
        return self._result(reader, started)

    def _call(
        self,
        model: type[ModelT],
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        idempotent: bool = True,
        answer_id: str | None = None,
    ) -> ModelT:
        """One request parsed into ``model``; with ``answer_id``, only an answer about that object."""
        content = self._send(ApiCall(self.settings, method, path, params, body, idempotent))
        return self._parsed(model, content, method, path, answer_id)

    async def _acall(
        self, model: type[ModelT], path: str, *, params: Mapping[str, Any] | None = None, answer_id: str | None = None
    ) -> ModelT:
        content = await self._asend(ApiCall(await self.asettings(), "GET", path, params))
        return self._parsed(model, content, "GET", path, answer_id)

    def _parsed(self, model: type[ModelT], content: bytes, method: str, path: str, answer_id: str | None) -> ModelT:
        answer = parse_model(model, content, method, path, self.cartesia_conn_id)
        if answer_id is not None:
            what = "agent call" if model is AgentCall else "call batch"
            check_answer_id(answer_id, getattr(answer, "id", None), what, method, path, self.cartesia_conn_id)
        return answer

    # -- call batches ------------------------------------------------------------------------------

    def get_call_batch(self, batch_id: str) -> CallBatch:
        """A batch with every recipient's current status (up to 5,000, in one response)."""
        return self._call(CallBatch, "GET", api_path(BATCH, batch_id=batch_id), answer_id=batch_id)

    async def aget_call_batch(self, batch_id: str) -> CallBatch:
        """Async :meth:`get_call_batch`, for triggers."""
        return await self._acall(CallBatch, api_path(BATCH, batch_id=batch_id), answer_id=batch_id)

    def get_call_batch_statuses(self, batch_id: str) -> CallBatch:
        """:meth:`get_call_batch` for a wait: recipients carry their status only (parsed 5x faster)."""
        return self._call(CallBatchStatuses, "GET", api_path(BATCH, batch_id=batch_id))

    async def aget_call_batch_statuses(self, batch_id: str) -> CallBatch:
        """Async :meth:`get_call_batch_statuses`, for triggers."""
        return await self._acall(CallBatchStatuses, api_path(BATCH, batch_id=batch_id))

    def list_call_batches(self, agent_id: str | None = None, page_size: int = MAX_PAGE_SIZE) -> Iterator[CallBatch]:
        """Every batch, newest first (optionally of one agent), page by page as you iterate; no recipients."""
        return self._paginate(CallBatchPage, BATCHES, {"agent_id": agent_id}, page_size)

    def list_call_batch_page(
        self, agent_id: str | None = None, limit: int = MAX_PAGE_SIZE, starting_after: str | None = None
    ) -> CallBatchPage:
        """One page of batches, newest first: counters and status, no recipients (about 450 bytes each)."""
        return self._call(CallBatchPage, "GET", BATCHES, params=_list_params(agent_id, limit, starting_after))

    async def alist_call_batch_page(
        self, agent_id: str | None = None, limit: int = MAX_PAGE_SIZE, starting_after: str | None = None
    ) -> CallBatchPage:
        """Async :meth:`list_call_batch_page`, for triggers."""
        return await self._acall(CallBatchPage, BATCHES, params=_list_params(agent_id, limit, starting_after))

    def find_call_batch_counters(
        self,
        batch_id: str,
        agent_id: str | None,
        created_at: datetime | None = None,
        *,
        page_size: int = SYNC_LIST_PAGE_SIZE,
        max_pages: int = MAX_LIST_PAGES,
    ) -> CallBatch | None:
        """The batch as its agent's list shows it (counters, no recipients), or None when the list does not
        show it within ``max_pages`` pages."""
        scan = ListScan({batch_id: created_at}, max_pages=max_pages)
        while scan.add(self.list_call_batch_page(agent_id, page_size, scan.cursor)):
            pass
        return scan.found.get(batch_id)

    def create_call_batch(
        self,
        name: str,
        agent_id: str,
        from_number_id: str,
        recipients: Iterable[Mapping[str, Any]],
        **options: Any,
    ) -> CallBatch:
        """Queue a batch of outbound calls; Cartesia starts dialing at once or at ``scheduled_at``.

        Sent once: without an answer it raises
        :class:`~airflow_provider_cartesia.exceptions.CartesiaCreateOutcomeUnknownError` (look the batch up
        by name before creating it again).

        :param recipients: ``{"to_number": "+1...", "metadata": {...}}`` items, 1 to 5,000.
        :param options: ``target_concurrency_limit``, ``ringing_timeout_seconds``,
            ``max_call_duration_minutes``, ``scheduled_at`` (aware datetime or RFC 3339), ``region``.
        """
        items = [dict(r) for r in recipients]
        if not 1 <= len(items) <= MAX_RECIPIENTS_PER_BATCH:
            raise CartesiaBadRequestError(
                f"a batch takes 1 to {MAX_RECIPIENTS_PER_BATCH:,} recipients, got {len(items):,}",
                method="POST",
                path=BATCHES,
                conn_id=self.cartesia_conn_id,
            )
        body = {"name": name, "agent_id": agent_id, "from_number_id": from_number_id, "recipients": items}
        body.update({k: v for k, v in options.items() if v is not None})
        return self._call(CallBatch, "POST", BATCHES, body=body, idempotent=False)

    def cancel_call_batch(self, batch_id: str) -> CallBatch:
        """Stop dialing the batch's queued recipients; calls in flight finish. Idempotent."""
        return self._call(CallBatch, "POST", api_path(BATCH_CANCEL, batch_id=batch_id), answer_id=batch_id)

    def retry_call_batch(self, batch_id: str) -> CallBatch:
        """Re-queue recipients whose latest attempt failed or went unanswered (not for cancelled batches).

        It dials, so like a create it is sent once (see :meth:`create_call_batch`).
        """
        path = api_path(BATCH_RETRY, batch_id=batch_id)
        return self._call(CallBatch, "POST", path, idempotent=False, answer_id=batch_id)

    # -- agent calls -------------------------------------------------------------------------------

    def list_agent_calls(
        self,
        batch_id: str | None = None,
        agent_id: str | None = None,
        start_time_gte: datetime | str | None = None,
        start_time_lte: datetime | str | None = None,
        expand_transcript: bool = False,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[AgentCall]:
        """Call attempts of a batch or an agent, page by page (a retried recipient appears once per attempt).

        Recipients that failed before dialing have no call; they are only on :meth:`get_call_batch`.
        """
        if batch_id is None and agent_id is None:
            raise ValueError("list_agent_calls needs batch_id or agent_id (the API requires one)")
        if batch_id is not None:
            api_path(BATCH, batch_id=batch_id)
        params = {
            "batch_id": batch_id,
            "agent_id": agent_id,
            "start_time_gte": start_time_gte,
            "start_time_lte": start_time_lte,
            "expand": "transcript" if expand_transcript else None,
        }
        return self._paginate(AgentCallPage, CALLS, params, page_size)

    def get_agent_call(self, call_id: str) -> AgentCall:
        """One call attempt: status, times, end reason, summary and metadata."""
        return self._call(AgentCall, "GET", api_path(CALL, call_id=call_id), answer_id=call_id)

    def _paginate(
        self,
        page_model: type[CallBatchPage] | type[AgentCallPage],
        path: str,
        params: dict[str, Any],
        page_size: int,
    ) -> Iterator[Any]:
        if not 1 <= page_size <= MAX_PAGE_SIZE:  # checked now, not at the first next()
            raise ValueError(f"page_size must be 1 to {MAX_PAGE_SIZE}, got {page_size}")

        def pages() -> Iterator[Any]:
            query = {**params, "limit": page_size}
            cursors: set[str] = set()
            while True:
                page = self._call(page_model, "GET", path, params=query)
                yield from page.data
                if not page.has_more or not page.data:
                    return
                cursor = page.next_page or page.data[-1].id
                if cursor in cursors:
                    raise ApiCall(self.settings, "GET", path).error(
                        CartesiaResponseError,
                        f"the list's page cursor {redact(str(cursor))[:80]!r} came back a second time, so the "
                        f"list would never end; stopped after {len(cursors) + 1} pages",
                    )
                cursors.add(cursor)
                query["starting_after"] = cursor

        return pages()

    def test_connection(self) -> tuple[bool, str]:
        """One authenticated read; on failure, say what to fix (key, host or version)."""
        try:
            settings = self.settings
            self._send(ApiCall(settings, "GET", BATCHES, {"limit": 1}))
        except CartesiaAuthError as exc:
            return False, (
                f"Cartesia refused the API key (HTTP {exc.status_code}). Put a current, non-admin key "
                f"(sk_car_...) in the password field of connection '{self.cartesia_conn_id}'."
            )
        except CartesiaBadRequestError as exc:
            return False, (
                f"Cartesia rejected the request: {exc.message}. Check the api_version extra "
                f"(supported: {', '.join(SUPPORTED_API_VERSIONS)})."
            )
        except CartesiaTransportError as exc:
            return False, f"Could not reach Cartesia: {exc}"
        except CartesiaError as exc:  # an unusable connection, or any other API error
            return False, str(exc)
        return True, f"Connected to Cartesia at {settings.base_url} (API version {settings.api_version})."


class CartesiaHookMixin:
    """The lazily built :class:`CartesiaHook` of an operator, sensor or trigger with a ``cartesia_conn_id``."""

    cartesia_conn_id: str = DEFAULT_CONN_ID

    @cached_property
    def hook(self) -> CartesiaHook:
        """Built on first use: the connection is looked up when the task runs, not when the DAG is parsed."""
        return CartesiaHook(self.cartesia_conn_id)


def _list_params(agent_id: str | None, limit: int, starting_after: str | None) -> dict[str, Any]:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be 1 to {MAX_PAGE_SIZE}, got {limit}")
    if agent_id is not None:
        api_path("{agent_id}", agent_id=agent_id)  # an id, not a query fragment
    return {"agent_id": agent_id, "limit": limit, "starting_after": starting_after}


def _requests_failure(call: ApiCall, exc: BaseException) -> CartesiaTransportError:
    """A requests or urllib3 failure as our error, ``sent=False`` only when the request cannot have left."""
    from requests import exceptions  # loaded already when this runs
    from urllib3.exceptions import NameResolutionError, NewConnectionError, ReadTimeoutError

    reason = getattr(exc.args[0], "reason", None) if exc.args else None  # requests wraps urllib3's error
    if isinstance(exc, exceptions.ConnectTimeout):
        return call.transport_error(exc, "connect timed out", sent=False)
    if isinstance(exc, (exceptions.Timeout, ReadTimeoutError)):
        return call.read_timeout(exc)
    if isinstance(exc, exceptions.SSLError):
        # A refused certificate ends the handshake before the request is written; any other TLS error may
        # come after it was sent (a corrupt record in the answer).
        if any(isinstance(arg, ssl.SSLCertVerificationError) for arg in getattr(reason, "args", ())):
            return call.transport_error(exc, "TLS handshake failed (certificate refused)", sent=False)
        return call.transport_error(exc, "TLS error (the request may have been sent)")
    if isinstance(exc, exceptions.ConnectionError) and isinstance(reason, (NewConnectionError, NameResolutionError)):
        return call.transport_error(exc, "could not connect", sent=False)
    if isinstance(exc, exceptions.RequestException) and not isinstance(exc, exceptions.ConnectionError):
        return call.transport_error(exc, "request failed")
    return call.transport_error(exc, "the connection dropped before a response arrived")


_NO_PROXIES: dict[str, str | None] = {"http": None, "https": None, "all": None}  # overrides the environment's


def _no_netrc(request: Any) -> Any:
    """The session's auth, keeping our ``Authorization`` header: requests reads ``~/.netrc`` (and a match
    would replace the header) only for a request without auth."""
    return request


class _Deadline:
    """An overall deadline for one sync request (a server trickling bytes never trips a read timeout): when
    it passes, a timer shuts down the sockets this thread sent on meanwhile, ending a blocked read at once."""

    active = threading.local()
    """``active.connections``: where this thread's connections go while a deadline runs."""

    def __init__(self, seconds: float) -> None:
        self.expired = self._done = False
        self.connections: list[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        _Deadline.active.connections = self.connections
        return self

    def __exit__(self, *exc: object) -> None:
        del _Deadline.active.connections
        with self._lock:  # an answer read in full is never cut afterwards
            self._done = True
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
        for conn in self.connections:
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)  # the plain method, also under TLS


def _make_deadline_adapter() -> Any:
    """requests' adapter whose pools (direct or through a proxy) register connections with :class:`_Deadline`."""
    from requests.adapters import HTTPAdapter  # with the session: not at DAG parse time
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def watched(pool: type[HTTPConnectionPool]) -> type[HTTPConnectionPool]:
        class Connection(pool.ConnectionCls):  # type: ignore[name-defined]
            def request(self, *args: Any, **kwargs: Any) -> None:
                getattr(_Deadline.active, "connections", []).append(self)
                super().request(*args, **kwargs)

        return type(pool.__name__, (pool,), {"ConnectionCls": Connection})

    classes = {"http": watched(HTTPConnectionPool), "https": watched(HTTPSConnectionPool)}

    class DeadlineAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = classes

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not proxy.lower().startswith("socks"):  # SOCKS pools have their own classes: no overall deadline there
                manager.pool_classes_by_scheme = classes
            return manager

    return DeadlineAdapter()


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The CA bundle (``SSL_CERT_FILE`` and friends honoured), read once per process."""
    import httpx

    return httpx.create_ssl_context(trust_env=True)


def _async_client(direct: bool) -> httpx.AsyncClient:
    """The current event loop's next httpx client (``direct``: for loopback, never through a proxy)."""
    import httpx

    loop = asyncio.get_running_loop()
    if loop not in _ASYNC_CLIENTS:
        for closed in [other for other in _ASYNC_CLIENTS if other.is_closed()]:
            del _ASYNC_CLIENTS[closed]  # their connections died with it
    clients = _ASYNC_CLIENTS.setdefault(loop, {})
    turn = (direct, next(_turns) % ASYNC_CLIENTS)
    if turn not in clients or clients[turn].is_closed:
        size = ASYNC_CLIENT_CONNECTIONS
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        clients[turn] = httpx.AsyncClient(
            limits=limits, verify=_ssl_context(), follow_redirects=False, trust_env=not direct
        )
    return clients[turn]
