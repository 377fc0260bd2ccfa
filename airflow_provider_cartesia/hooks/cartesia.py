"""CartesiaHook: the one place that speaks HTTP to Cartesia.

Every request goes through one funnel (:meth:`CartesiaHook._send` for requests, :meth:`CartesiaHook._asend`
for httpx in triggers). Both funnels build the request and read the answer with
:mod:`airflow_provider_cartesia.api` and decide on retries with :mod:`airflow_provider_cartesia.retry`;
only the I/O is written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from airflow_provider_cartesia.api import (
    CONN_TYPE,
    DEFAULT_CONN_ID,
    READ_CHUNK_BYTES,
    SUPPORTED_API_VERSIONS,
    ApiSettings,
    BodyReader,
    api_path,
    check_answer_id,
    error_from_response,
    parse_model,
    settings_from_connection,
)
from airflow_provider_cartesia.compat import BaseHook
from airflow_provider_cartesia.exceptions import (
    CartesiaAuthError,
    CartesiaBadRequestError,
    CartesiaCreateOutcomeUnknownError,
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
from airflow_provider_cartesia.retry import retry_delay, should_retry

if TYPE_CHECKING:
    import httpx
    import requests

ModelT = TypeVar("ModelT")

BATCHES = "/agents/calls/batches"
BATCH = "/agents/calls/batches/{batch_id}"
BATCH_CANCEL = "/agents/calls/batches/{batch_id}/cancel"
BATCH_RETRY = "/agents/calls/batches/{batch_id}/retry"
CALLS = "/agents/calls"
CALL = "/agents/calls/{call_id}"
MAX_PAGE_SIZE = 100

# Every hook on an event loop (every trigger of a triggerer) shares that loop's connections, so a
# thousand waiting batches reuse keep-alive connections instead of opening one each. See _AsyncPools.
_ASYNC_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[bool, _AsyncPools]] = (
    weakref.WeakKeyDictionary()
)
ASYNC_POOLS = 64
ASYNC_POOL_CONNECTIONS = 4


class CartesiaHook(BaseHook):
    """Talk to the Cartesia API: call batches and agent calls, typed, authenticated and retried.

    Requests carry ``Authorization: Bearer <key>``, ``Cartesia-Version`` and a timeout. Reads are
    retried on 408, 429, 5xx and network errors, with capped exponential backoff that honours
    ``Retry-After``; creating a batch is never resent once it may have reached Cartesia.

    :param cartesia_conn_id: Airflow connection of type ``cartesia``: API key in the password field,
        base URL in the host field, extras ``api_version``, ``timeout``, ``max_retries``, ``dashboard_url``,
        ``max_response_bytes``.
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

    # -- connection ---------------------------------------------------------------------------

    @cached_property
    def settings(self) -> ApiSettings:
        """The connection, validated and resolved (looked up once per hook)."""
        conn = self.get_connection(self.cartesia_conn_id)
        return settings_from_connection(conn, timeout=self.timeout, max_retries=self.max_retries)

    async def asettings(self) -> ApiSettings:
        """Like :attr:`settings`, looked up with Airflow's async connection API (safe in a triggerer)."""
        if "settings" not in self.__dict__:
            conn = await self.aget_connection(self.cartesia_conn_id)
            # Off the event loop: checking the URL imports and runs the HTTP libraries' parsers.
            self.__dict__["settings"] = await asyncio.to_thread(
                settings_from_connection, conn, timeout=self.timeout, max_retries=self.max_retries
            )
        return self.__dict__["settings"]

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session for every request of this hook, its connections watched by :class:`_Deadline`."""
        import requests

        session = requests.Session()
        session.trust_env = True  # HTTPS_PROXY and REQUESTS_CA_BUNDLE; never .netrc: see _BearerAuth
        adapter = _make_deadline_adapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    # -- the request funnel (sync) -------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        idempotent: bool = True,
    ) -> bytes:
        """Send one API request, retrying as :func:`~airflow_provider_cartesia.retry.should_retry` allows."""
        from tenacity import Retrying

        settings = self.settings
        for attempt in Retrying(sleep=self._sleep, **self._retry_policy(settings, idempotent)):
            with attempt:
                return self._send_once(settings, method, path, params, body, idempotent)
        raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

    def _send_once(
        self,
        settings: ApiSettings,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Any,
        idempotent: bool,
    ) -> bytes:
        import requests
        from urllib3.exceptions import HTTPError as Urllib3Error

        headers = settings.headers()
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, default=_json_default).encode()
        started = time.monotonic()
        deadline = _Deadline(settings.deadline)
        try:
            with deadline:
                response = self.session.request(
                    method,
                    settings.url(path),
                    params=_clean_params(params),
                    data=data,
                    headers=headers,
                    auth=_BearerAuth(headers["Authorization"]),
                    timeout=(settings.connect_timeout, settings.read_timeout),
                    allow_redirects=False,
                    stream=True,
                    proxies=_NO_PROXIES if settings.direct else None,  # type: ignore[arg-type]
                )
                with response:
                    reader = BodyReader(
                        settings, method, path, response.status_code, response.headers.get("content-encoding")
                    )
                    for chunk in response.raw.stream(READ_CHUNK_BYTES, decode_content=False):
                        reader.feed(chunk)
                        if reader.full:
                            break
        except (requests.exceptions.RequestException, Urllib3Error, OSError) as exc:
            what, sent = _requests_failure(exc, settings, deadline.expired)
            raise _transport_error(settings, method, path, exc, what, sent=sent, idempotent=idempotent) from exc
        if deadline.expired:  # cut off while reading the headers, which http.client may take as their end
            raise _transport_error(
                settings, method, path, TimeoutError(), _deadline_passed(settings), sent=True, idempotent=idempotent
            )
        return self._answer(settings, method, path, response.status_code, response.headers, reader.content(), started)

    def _retry_policy(self, settings: ApiSettings, idempotent: bool) -> dict[str, Any]:
        """Tenacity arguments shared by both funnels: the one retry policy, bounded by the connection."""
        from tenacity import retry_if_exception, stop_after_attempt

        return {
            "stop": stop_after_attempt(settings.max_retries + 1),
            "retry": retry_if_exception(lambda exc: should_retry(exc, idempotent=idempotent)),
            "wait": _retry_wait,
            "before_sleep": self._log_retry,
            "reraise": True,
        }

    def _answer(
        self,
        settings: ApiSettings,
        method: str,
        path: str,
        status_code: int,
        headers: Mapping[str, str],
        content: bytes,
        started: float,
    ) -> bytes:
        """The body of a successful response; an error response becomes its exception."""
        self.log.debug("%s %s -> %s in %.0f ms", method, path, status_code, 1000 * (time.monotonic() - started))
        if status_code >= 300:
            raise error_from_response(settings, method, path, status_code, headers, content)
        return content

    def _log_retry(self, state: Any) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        self.log.warning(
            "Retrying in %.1f s (retry %d of %d): %s",
            wait,
            state.attempt_number,
            self.settings.max_retries,
            error,
        )

    def _call(
        self,
        model: type[ModelT],
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        idempotent: bool = True,
    ) -> ModelT:
        content = self._send(method, path, params=params, body=body, idempotent=idempotent)
        return parse_model(model, content, method, path, self.cartesia_conn_id)

    # -- the request funnel (async, for triggers) ----------------------------------------------

    async def _asend(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        idempotent: bool = True,
    ) -> bytes:
        """Async twin of :meth:`_send` on httpx, with the same retry decisions."""
        from tenacity import AsyncRetrying

        settings = await self.asettings()
        async for attempt in AsyncRetrying(sleep=self._asleep, **self._retry_policy(settings, idempotent)):
            with attempt:
                return await self._asend_once(settings, method, path, params, idempotent)
        raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

    async def _asend_once(
        self,
        settings: ApiSettings,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        idempotent: bool,
    ) -> bytes:
        import httpx

        started = time.monotonic()

        async def exchange() -> tuple[httpx.Response, BodyReader]:
            async with _async_pools(settings.direct).lease() as client:
                request = client.build_request(
                    method,
                    settings.url(path),
                    params=_clean_params(params),
                    headers=settings.headers(),
                    timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
                )
                response = await client.send(request, stream=True)
                try:
                    reader = BodyReader(
                        settings, method, path, response.status_code, response.headers.get("content-encoding")
                    )
                    async for chunk in response.aiter_raw(READ_CHUNK_BYTES):
                        reader.feed(chunk)
                        if reader.full:
                            break
                finally:
                    await response.aclose()
                return response, reader

        try:
            response, reader = await asyncio.wait_for(exchange(), settings.deadline)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _transport_error(
                settings, method, path, exc, "could not connect", sent=False, idempotent=True
            ) from exc
        except httpx.TimeoutException as exc:
            what = f"no response within the {settings.read_timeout:g} s read timeout"
            raise _transport_error(settings, method, path, exc, what, sent=True, idempotent=idempotent) from exc
        except asyncio.TimeoutError as exc:
            what = _deadline_passed(settings)
            raise _transport_error(settings, method, path, exc, what, sent=True, idempotent=idempotent) from exc
        except httpx.HTTPError as exc:
            what = "the connection dropped before a response arrived"
            raise _transport_error(settings, method, path, exc, what, sent=True, idempotent=idempotent) from exc
        return self._answer(settings, method, path, response.status_code, response.headers, reader.content(), started)

    # -- call batches --------------------------------------------------------------------------

    def get_call_batch(self, batch_id: str) -> CallBatch:
        """A batch with every recipient's current status (up to 5,000, in one response)."""
        path = api_path(BATCH, batch_id=batch_id)
        return self._checked(self._call(CallBatch, "GET", path), batch_id, "call batch", "GET", path)

    async def aget_call_batch(self, batch_id: str) -> CallBatch:
        """Async :meth:`get_call_batch`, for triggers."""
        path = api_path(BATCH, batch_id=batch_id)
        content = await self._asend("GET", path)
        batch = parse_model(CallBatch, content, "GET", path, self.cartesia_conn_id)
        return self._checked(batch, batch_id, "call batch", "GET", path)

    def _checked(self, answer: ModelT, requested: str, what: str, method: str, path: str) -> ModelT:
        """``answer``, once it is about the object requested (its ``id``)."""
        check_answer_id(requested, getattr(answer, "id", None), what, method, path, self.cartesia_conn_id)
        return answer

    def list_call_batches(self, agent_id: str | None = None, page_size: int = MAX_PAGE_SIZE) -> Iterator[CallBatch]:
        """Every batch, newest first (optionally of one agent), fetched page by page as you iterate.

        Batches in a list carry no recipients; use :meth:`get_call_batch` for those.
        """
        return self._paginate(CallBatchPage, BATCHES, {"agent_id": agent_id}, page_size)

    def get_call_batch_statuses(self, batch_id: str) -> CallBatch:
        """:meth:`get_call_batch` for a wait: recipients carry their status only (parsed 5x faster)."""
        return self._call(CallBatchStatuses, "GET", api_path(BATCH, batch_id=batch_id))

    async def aget_call_batch_statuses(self, batch_id: str) -> CallBatch:
        """Async :meth:`get_call_batch_statuses`, for triggers."""
        path = api_path(BATCH, batch_id=batch_id)
        content = await self._asend("GET", path)
        return parse_model(CallBatchStatuses, content, "GET", path, self.cartesia_conn_id)

    def list_call_batch_page(
        self, agent_id: str | None = None, limit: int = MAX_PAGE_SIZE, starting_after: str | None = None
    ) -> CallBatchPage:
        """One page of batches, newest first: counters and status, no recipients (about 450 bytes each)."""
        return self._call(CallBatchPage, "GET", BATCHES, params=_list_params(agent_id, limit, starting_after))

    async def alist_call_batch_page(
        self, agent_id: str | None = None, limit: int = MAX_PAGE_SIZE, starting_after: str | None = None
    ) -> CallBatchPage:
        """Async :meth:`list_call_batch_page`, for triggers."""
        content = await self._asend("GET", BATCHES, params=_list_params(agent_id, limit, starting_after))
        return parse_model(CallBatchPage, content, "GET", BATCHES, self.cartesia_conn_id)

    def find_call_batch_counters(
        self,
        batch_id: str,
        agent_id: str | None,
        created_at: datetime | None = None,
        *,
        page_size: int = SYNC_LIST_PAGE_SIZE,
        max_pages: int = MAX_LIST_PAGES,
    ) -> CallBatch | None:
        """The batch as the list shows it (counters, no recipients), or None when the list does not show
        it within ``max_pages`` pages (read it with :meth:`get_call_batch` then)."""
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

        Sent once: the API has no idempotency key, so a request that may have reached Cartesia is
        never resent (that could dial every recipient twice). If no answer arrives,
        :class:`~airflow_provider_cartesia.exceptions.CartesiaCreateOutcomeUnknownError` is raised:
        look the batch up by name with :meth:`list_call_batches` before creating it again.

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
        path = api_path(BATCH_CANCEL, batch_id=batch_id)
        return self._checked(self._call(CallBatch, "POST", path), batch_id, "call batch", "POST", path)

    def retry_call_batch(self, batch_id: str) -> CallBatch:
        """Re-queue recipients whose latest attempt failed or went unanswered (not for cancelled batches).

        It dials again, so like a create it is sent once: a resend after a lost answer could re-dial
        recipients whose new attempt already failed. Without an answer,
        :class:`~airflow_provider_cartesia.exceptions.CartesiaCreateOutcomeUnknownError` is raised.
        """
        path = api_path(BATCH_RETRY, batch_id=batch_id)
        batch = self._call(CallBatch, "POST", path, idempotent=False)
        return self._checked(batch, batch_id, "call batch", "POST", path)

    # -- agent calls ---------------------------------------------------------------------------

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
        path = api_path(CALL, call_id=call_id)
        return self._checked(self._call(AgentCall, "GET", path), call_id, "agent call", "GET", path)

    def _paginate(
        self,
        page_model: type[CallBatchPage] | type[AgentCallPage],
        path: str,
        params: dict[str, Any],
        page_size: int,
    ) -> Iterator[Any]:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
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
                    raise CartesiaResponseError(
                        f"the list's page cursor {redact(str(cursor))[:80]!r} came back a second time, so the "
                        f"list would never end; stopped after {len(cursors) + 1} pages",
                        method="GET",
                        path=path,
                        conn_id=self.cartesia_conn_id,
                    )
                cursors.add(cursor)
                query["starting_after"] = cursor

        return pages()

    # -- Airflow integration -------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """One authenticated read; on failure, say what to fix (key, host or version)."""
        try:
            settings = self.settings
            self._send("GET", BATCHES, params={"limit": 1})
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


def _urllib3_reason(exc: BaseException) -> BaseException | None:
    """The urllib3 error behind a requests exception (requests wraps it in a ``MaxRetryError``)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return reason if isinstance(reason, BaseException) else None


def _retry_wait(state: Any) -> float:
    """Tenacity's wait: the shared :func:`retry_delay` applied to the failure just seen."""
    error = state.outcome.exception() if state.outcome else None
    return retry_delay(state.attempt_number - 1, error if isinstance(error, BaseException) else None)


def _list_params(agent_id: str | None, limit: int, starting_after: str | None) -> dict[str, Any]:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be 1 to {MAX_PAGE_SIZE}, got {limit}")
    if agent_id is not None:
        api_path("{agent_id}", agent_id=agent_id)  # an id, not a query fragment
    return {"agent_id": agent_id, "limit": limit, "starting_after": starting_after}


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    return {k: _query_value(v) for k, v in params.items() if v is not None}


def _query_value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("datetimes sent to Cartesia must be timezone-aware (RFC 3339 with offset)")
        return value.isoformat().replace("+00:00", "Z")
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _transport_error(
    settings: ApiSettings,
    method: str,
    path: str,
    exc: BaseException,
    what: str,
    *,
    sent: bool,
    idempotent: bool,
) -> CartesiaTransportError:
    """A transport failure as our error; a create that may have arrived becomes 'outcome unknown'."""
    cls = CartesiaTransportError if idempotent or not sent else CartesiaCreateOutcomeUnknownError
    message = f"{what} ({type(exc).__name__}, base URL {settings.base_url})"
    return cls(message, sent=sent, method=method, path=path, conn_id=settings.conn_id)


_NO_PROXIES: dict[str, str | None] = {"http": None, "https": None, "all": None}
"""Per-request proxies of requests that override the environment's: loopback never goes through a proxy."""


class _BearerAuth:
    """Sets our ``Authorization`` header as requests' auth, so no ``~/.netrc`` entry can replace it.

    requests consults ``.netrc`` (with ``trust_env``) only when a request has no auth of its own, and a
    match would overwrite the header with Basic credentials.
    """

    def __init__(self, value: str) -> None:
        self.value = value

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = self.value
        return request


def _deadline_passed(settings: ApiSettings) -> str:
    return (
        f"no complete answer within the {settings.deadline:g} s deadline (connect plus read timeout); the server "
        "kept the connection busy without finishing"
    )


def _requests_failure(exc: BaseException, settings: ApiSettings, expired: bool) -> tuple[str, bool]:
    """``(what happened, whether the request may have been sent)`` for a requests or urllib3 failure."""
    import requests
    from urllib3.exceptions import NameResolutionError, NewConnectionError, ReadTimeoutError

    if expired:
        return _deadline_passed(settings), True
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timed out", False
    if isinstance(exc, (requests.exceptions.Timeout, ReadTimeoutError)):
        return f"no response within the {settings.read_timeout:g} s read timeout", True
    if isinstance(exc, requests.exceptions.SSLError):
        # A refused certificate ends the handshake before the request is written. Any other TLS
        # error may come after the request was sent (a corrupt record in the answer).
        reason = _urllib3_reason(exc)
        if reason and reason.args and isinstance(reason.args[0], ssl.SSLCertVerificationError):
            return "TLS handshake failed (certificate refused)", False
        return "TLS error (the request may have been sent)", True
    if isinstance(exc, requests.exceptions.ConnectionError):
        if isinstance(_urllib3_reason(exc), (NewConnectionError, NameResolutionError)):
            return "could not connect", False
        return "the connection dropped before a response arrived", True
    if isinstance(exc, requests.exceptions.RequestException):
        return "request failed", True
    return "the connection dropped before a response arrived", True


class _Deadline:
    """An overall deadline for one sync request: the read timeout bounds each socket read, not the answer.

    A server trickling a byte at a time never trips a read timeout. When the deadline passes, a timer
    shuts the request's socket down, which ends the blocked read at once; the connections are the ones
    this thread sends a request on while the deadline is active (see :func:`_make_deadline_adapter`).
    """

    _active = threading.local()

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self.connections: list[Any] = []
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._done = False

    def __enter__(self) -> _Deadline:
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()
        _Deadline._active.current = self
        return self

    def __exit__(self, *exc: object) -> None:
        _Deadline._active.current = None
        with self._lock:  # an answer read in full is never cut afterwards
            self._done = True
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
        for conn in self.connections:
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain method, also under TLS

    @classmethod
    def watch(cls, conn: Any) -> None:
        current = getattr(cls._active, "current", None)
        if current is not None:
            current.connections.append(conn)


def _make_deadline_adapter() -> Any:
    """requests' adapter whose pools (direct or through a proxy) register connections with :class:`_Deadline`."""
    from requests.adapters import HTTPAdapter
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def watched(pool: type[HTTPConnectionPool]) -> type[HTTPConnectionPool]:
        class Connection(pool.ConnectionCls):  # type: ignore[name-defined]
            def request(self, *args: Any, **kwargs: Any) -> None:
                _Deadline.watch(self)
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


class _AsyncPools:
    """The httpx clients of one event loop: several small pools, each request on the least busy one.

    Not one big pool: httpcore 1.0 does O(connections²) work in a pool on every request, queues
    expensively, and closes idle connections whenever the pool holds more than
    ``max_keepalive_connections``. One pool of 200 managed about 60 polls/s for 1,000 triggers against
    a 100 ms API (benchmarks/bench_trigger.py). Here a request beyond the connections available waits
    on a semaphore (cheap), then takes the pool with the fewest requests in flight, lowest first, so a
    quiet triggerer keeps only a connection or two warm.
    """

    def __init__(self, direct: bool = False) -> None:
        self.direct = direct
        self.clients: list[httpx.AsyncClient | None] = [None] * ASYNC_POOLS
        self.in_flight = [0] * ASYNC_POOLS
        self.slots = asyncio.Semaphore(ASYNC_POOLS * ASYNC_POOL_CONNECTIONS)
        self._ssl_context: Any = None

    def _client(self, index: int) -> httpx.AsyncClient:
        import httpx

        client = self.clients[index]
        if client is None or client.is_closed:
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context(trust_env=True)  # the CA bundle, read once
            limits = httpx.Limits(
                max_connections=ASYNC_POOL_CONNECTIONS, max_keepalive_connections=ASYNC_POOL_CONNECTIONS
            )
            # trust_env: HTTPS_PROXY and friends, except for loopback (direct), which never uses a proxy.
            client = httpx.AsyncClient(
                limits=limits, verify=self._ssl_context, follow_redirects=False, trust_env=not self.direct
            )
            self.clients[index] = client
        return client

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client with a free connection, for one request."""
        async with self.slots:
            index = self.in_flight.index(min(self.in_flight))
            self.in_flight[index] += 1
            try:
                yield self._client(index)
            finally:
                self.in_flight[index] -= 1


def _async_pools(direct: bool = False) -> _AsyncPools:
    """The pools shared by every hook running on the current event loop (``direct``: for loopback, no proxy)."""
    loop = asyncio.get_running_loop()
    pools = _ASYNC_POOLS.get(loop)
    if pools is None:
        # The pools hold their loop (connections, semaphore), so a closed loop's entry is dropped here.
        for closed in [other for other in _ASYNC_POOLS if other.is_closed()]:
            del _ASYNC_POOLS[closed]
        pools = _ASYNC_POOLS[loop] = {}
    if direct not in pools:
        pools[direct] = _AsyncPools(direct)
    return pools[direct]
