"""The simulated Cartesia API: routing, auth, version check and the endpoint handlers.

Transport-free: :meth:`CartesiaApi.handle` turns an :class:`ApiRequest` into an
:class:`ApiResponse`; ``server.py`` does the HTTP. Routes (cartesia-api.md §2):

====  ======  ============================================  =======
B1    POST    /agents/calls/batches                          201
B2    GET     /agents/calls/batches                          200
B3    GET     /agents/calls/batches/{batch_id}               200
B4    POST    /agents/calls/batches/{batch_id}/cancel        200
B5    POST    /agents/calls/batches/{batch_id}/retry         200
C1    GET     /agents/calls                                  200
C3    GET     /agents/calls/{call_id}                        200
--    GET     /  (liveness, no auth)                         200
====  ======  ============================================  =======

These are the routes the hook calls; the API's others (single calls created, cancelled or deleted,
call audio) are not served. Every route but ``/`` needs ``Authorization: Bearer <key>`` (or
``X-API-Key: <key>``; else 401) and then a ``Cartesia-Version`` of ``2026-03-01`` or ``2026-08-14``
(else 400); then an unknown path is 404 and a known path with another method 405. Error bodies are
``{"error_code", "title", "message", "request_id"}`` (§4); ``error_code`` is null except
``concurrency_limited`` on 429, since the real codes are not documented.
"""

from __future__ import annotations

import hmac
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote

from airflow_provider_cartesia.testing.clock import SimClock
from airflow_provider_cartesia.testing.state import (
    Attempt,
    Batch,
    CallProfile,
    Recipient,
    SimState,
    snapshot,
    truncate_ms,
)
from airflow_provider_cartesia.testing.validation import (
    ValidationError,
    batch_request,
    parse_time,
)
from airflow_provider_cartesia.testing.views import batch_json, call_json

ACCEPTED_VERSIONS = ("2026-03-01", "2026-08-14")
DEFAULT_LIST_LIMIT = 10
MAX_LIST_LIMIT = 100

_ERROR_CODES = {429: "concurrency_limited"}

T = TypeVar("T")


class ApiConfig(Protocol):
    """The settings the API reads on every request (attributes of ``CartesiaSimulator``)."""

    api_key: str
    org_concurrency_limit: int
    unknown_agent_ids: set[str]
    unknown_phone_number_ids: set[str]
    sip_trunk_number_ids: set[str]
    telephony_region: str
    metadata_max_bytes: int | None
    dispatch_interval: float
    call_seconds: tuple[float, float]
    outcomes: dict[str, float] | None


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any | None


@dataclass
class ApiResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class ApiError(Exception):
    """Raised by a handler: becomes the API's JSON error response."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_payload(status: int, message: str, request_id: str) -> dict[str, Any]:
    """The documented error body (§4)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {"error_code": _ERROR_CODES.get(status), "title": title, "message": message, "request_id": request_id}


def default_error_message(status: int) -> str:
    if status == 429:
        return "You have exceeded your plan's concurrency limit."
    if status >= 500:
        return "An internal error occurred. Please retry the request."
    try:
        return HTTPStatus(status).description or HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def json_response(status: int, payload: Any) -> ApiResponse:
    return ApiResponse(status, json.dumps(payload, separators=(",", ":")).encode())


Handler = Callable[[ApiRequest, dict[str, str], datetime], ApiResponse]


class CartesiaApi:
    """The API over one :class:`SimState`; :meth:`handle` is thread-safe (one lock for the state)."""

    def __init__(self, config: ApiConfig, clock: SimClock, seed: int = 0) -> None:
        self.config = config
        self.clock = clock
        self.seed = seed
        self.state = SimState(seed)
        self.lock = threading.RLock()
        self.routes: list[tuple[tuple[str, ...], dict[str, Handler]]] = [
            (("agents", "calls", "batches"), {"GET": self.list_batches, "POST": self.create_batch}),
            (("agents", "calls", "batches", "{id}"), {"GET": self.get_batch}),
            (("agents", "calls", "batches", "{id}", "cancel"), {"POST": self.cancel_batch}),
            (("agents", "calls", "batches", "{id}", "retry"), {"POST": self.retry_batch}),
            (("agents", "calls"), {"GET": self.list_calls}),
            (("agents", "calls", "{id}"), {"GET": self.get_call}),
        ]

    def reset(self) -> None:
        with self.lock:
            self.state = SimState(self.seed)

    def request_id(self) -> str:
        with self.lock:
            return str(uuid.UUID(int=self.state.rng.getrandbits(128), version=4))

    def error(self, status: int, message: str | None = None, headers: dict[str, str] | None = None) -> ApiResponse:
        payload = error_payload(status, message or default_error_message(status), self.request_id())
        response = json_response(status, payload)
        response.headers.update(headers or {})
        return response

    # ---- dispatch ---------------------------------------------------------------------------------

    def handle(self, request: ApiRequest) -> ApiResponse:
        try:
            return self._handle(request)
        except ApiError as exc:
            return self.error(exc.status, exc.message, exc.headers)

    def _handle(self, request: ApiRequest) -> ApiResponse:
        if request.path == "/" and request.method == "GET":
            return json_response(200, {"ok": True, "version": ACCEPTED_VERSIONS[0]})
        if not self._authorized(request.headers):
            raise ApiError(401, "Missing or invalid API key. Send it as `Authorization: Bearer <key>`.")
        version = request.headers.get("cartesia-version")
        if version not in ACCEPTED_VERSIONS:
            problem = "Missing" if version is None else "Unsupported"
            raise ApiError(
                400, f"{problem} Cartesia-Version header. Accepted versions: {', '.join(ACCEPTED_VERSIONS)}."
            )
        handler, params = self._route(request.method, request.path)
        with self.lock:
            now = truncate_ms(self.clock.now())
            return handler(request, params, now)

    def _authorized(self, headers: dict[str, str]) -> bool:
        key = self.config.api_key.encode()
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key):
            return True
        x_api_key = headers.get("x-api-key")
        return x_api_key is not None and hmac.compare_digest(x_api_key.strip().encode(), key)

    def _route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        segments = tuple(unquote(s) for s in path.split("/")[1:])
        for pattern, methods in self.routes:
            if len(pattern) != len(segments):
                continue
            params: dict[str, str] = {}
            for want, got in zip(pattern, segments, strict=True):
                if want.startswith("{"):
                    if not got:
                        break
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                if method not in methods:
                    raise ApiError(405, f"Method {method} is not allowed on this path.", {"Allow": ", ".join(methods)})
                return methods[method], params
        raise ApiError(404, "The requested resource was not found.")

    # ---- helpers ----------------------------------------------------------------------------------

    def _body(self, request: ApiRequest) -> Any:
        if request.json is None and request.body.strip() not in (b"null",):
            raise ApiError(400, "The request body must be valid JSON.")
        return request.json

    def _agent_known(self, agent_id: str) -> bool:
        return agent_id not in self.config.unknown_agent_ids and not agent_id.startswith("agent_missing")

    def _number_known(self, number_id: str) -> bool:
        return number_id not in self.config.unknown_phone_number_ids and not number_id.startswith("pn_missing")

    def telephony_account_type(self, number_id: str) -> str:
        """``sip_trunk`` for the SIP-trunk numbers (``sip_trunk_number_ids``, ids starting ``pn_sip``),
        else ``cartesia`` (a Cartesia-hosted number)."""
        if number_id in self.config.sip_trunk_number_ids or number_id.startswith("pn_sip"):
            return "sip_trunk"
        return "cartesia"

    def batch_region(self, from_number_id: str, region: str | None) -> str:
        """The region a batch dispatches from: ``region`` is accepted for a SIP-trunk number only;
        omitted, it comes from the telephony account (``telephony_region``)."""
        if region is None:
            return self.config.telephony_region
        if self.telephony_account_type(from_number_id) != "sip_trunk":
            raise ApiError(
                400,
                "`region` is valid only when `from_number_id` is a SIP-trunk number; omit it to use the "
                "region of the number's telephony account.",
            )
        return region

    def _check_agent_and_number(self, agent_id: str, from_number_id: str) -> None:
        if not self._agent_known(agent_id):
            raise ApiError(404, "Agent not found.")
        if not self._number_known(from_number_id):
            raise ApiError(404, "Phone number not found.")

    def profile(self) -> CallProfile:
        return CallProfile(
            dispatch_interval=self.config.dispatch_interval,
            call_seconds=self.config.call_seconds,
            outcomes=self.config.outcomes,
        )

    def _batch(self, batch_id: str) -> Batch:
        batch = self.state.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "Batch not found.")
        return batch

    def _call(self, call_id: str, now: datetime) -> tuple[Recipient, Attempt]:
        found = self.state.visible_call(call_id, now)
        if found is None:
            raise ApiError(404, "Call not found.")
        return found

    @staticmethod
    def _limit(query: dict[str, str]) -> int:
        raw = query.get("limit") or ""
        if not raw:
            return DEFAULT_LIST_LIMIT
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
            raise ApiError(400, f"`limit` must be an integer between 1 and {MAX_LIST_LIMIT}.")
        return int(raw)

    @classmethod
    def _page(
        cls, ordered: list[T], selected: list[T], id_of: Callable[[T], str], query: dict[str, str]
    ) -> dict[str, Any]:
        """Cursor pagination over ``selected`` (a filtered sub-list of ``ordered``, newest first).

        ``starting_after`` pages towards older items, ``ending_before`` towards newer ones; a cursor
        must be the id of an existing item. ``next_page`` is the cursor that continues in the same
        direction (the last item going forward, the first item going backward) when ``has_more``.
        """
        limit = cls._limit(query)
        after, before = query.get("starting_after") or None, query.get("ending_before") or None
        if after and before:
            raise ApiError(400, "Pass at most one of `starting_after` and `ending_before`.")
        position = {id_of(item): index for index, item in enumerate(ordered)}
        cursor = after or before
        if cursor is not None and cursor not in position:
            which = "starting_after" if after else "ending_before"
            raise ApiError(400, f"`{which}` is not the id of an existing object.")
        if before is not None:
            rest = [item for item in selected if position[id_of(item)] < position[before]]
            page = rest[-limit:]
            has_more = len(rest) > limit
            next_page = id_of(page[0]) if has_more else None
        else:
            if after is not None:
                rest = [item for item in selected if position[id_of(item)] > position[after]]
            else:
                rest = selected
            page = rest[:limit]
            has_more = len(rest) > limit
            next_page = id_of(page[-1]) if has_more else None
        return {"data": page, "has_more": has_more, "next_page": next_page}

    # ---- batches (B1-B5) --------------------------------------------------------------------------

    def create_batch(self, request: ApiRequest, params: dict[str, str], now: datetime) -> ApiResponse:
        try:
            spec = batch_request(
                self._body(request),
                now=now,
                org_concurrency_limit=self.config.org_concurrency_limit,
                metadata_max_bytes=self.config.metadata_max_bytes,
            )
        except ValidationError as exc:
            raise ApiError(400, str(exc)) from exc
        self._check_agent_and_number(spec.agent_id, spec.from_number_id)
        region = self.batch_region(spec.from_number_id, spec.region)
        batch = self.state.create_batch(
            now=now,
            name=spec.name,
            agent_id=spec.agent_id,
            from_number_id=spec.from_number_id,
            recipients=spec.recipients,
            profile=self.profile(),
            target_concurrency_limit=spec.target_concurrency_limit,
            ringing_timeout_seconds=spec.ringing_timeout_seconds,
            max_call_duration_minutes=spec.max_call_duration_minutes,
            scheduled_at=spec.scheduled_at,
            region=region,
            telephony_account_type=self.telephony_account_type(spec.from_number_id),
        )
        return json_response(201, batch_json(batch, now, with_recipients=False))

    def list_batches(self, request: ApiRequest, params: dict[str, str], now: datetime) -> ApiResponse:
        ordered = self.state.batches_newest_first()
        agent_id = request.query.get("agent_id") or None
        selected = [b for b in ordered if agent_id is None or b.agent_id == agent_id]
        page = self._page(ordered, selected, lambda b: b.id, request.query)
        page["data"] = [batch_json(b, now, with_recipients=False) for b in page["data"]]
        return json_response(200, page)

    def get_batch(self, request: ApiRequest, params: dict[str, str], now: datetime) -> ApiResponse:
        return json_response(200, batch_json(self._batch(params["id"]), now, with_recipients=True))

    def cancel_batch(self, request: ApiRequest, params: dict[str, str], now: datetime) -> ApiResponse:
        batch = self._batch(params["id"])
        self.state.cancel_batch(batch, now)
        return json_response(200, batch_json(batch, now, with_recipients=False))

    def retry_batch(self, request: ApiRequest, params: dict[str, str], now: datetime) -> ApiResponse:
        batch = self._batch(params["id"])
        if snapshot(batch, now).status == "cancelled":
            raise ApiError(400, "The batch is cancelled and cannot be retried.")
        self.state.retry_batch(batch, now)
        return json_response(200, batch_json(batch, now, with_recipients=False))

    # ---- calls (C1, C3) ----------------------------------------------------------------------------

    def list_calls(self, request: ApiRequest, params: dict[str, str], now: datetime) -> ApiResponse:
        query = request.query
        agent_id, batch_id = query.get("agent_id") or None, query.get("batch_id") or None
        if agent_id is None and batch_id is None:
            raise ApiError(400, "One of `agent_id` or `batch_id` is required.")
        batch = None
        if batch_id is not None:
            batch = self._batch(batch_id)
            if agent_id is not None and agent_id != batch.agent_id:
                raise ApiError(400, "`agent_id` does not match the batch's agent.")
        elif agent_id is not None and not self._agent_known(agent_id):
            raise ApiError(404, "Agent not found.")
        try:
            gte = parse_time(query["start_time_gte"], "`start_time_gte`") if query.get("start_time_gte") else None
            lte = parse_time(query["start_time_lte"], "`start_time_lte`") if query.get("start_time_lte") else None
        except ValidationError as exc:
            raise ApiError(400, str(exc)) from exc
        if gte is not None and lte is not None and gte > lte:
            raise ApiError(400, "`start_time_gte` is after `start_time_lte`.")
        expand = {e.strip() for e in (query.get("expand") or "").split(",") if e.strip()}
        if expand - {"transcript"}:
            raise ApiError(400, "`expand` only supports `transcript`.")

        def wanted(found: tuple[Recipient, Attempt]) -> bool:
            recipient, attempt = found
            if batch is not None and recipient.batch is not batch:
                return False
            if agent_id is not None and recipient.agent_id != agent_id:
                return False
            if gte is not None and attempt.dispatch_at < gte:
                return False
            return lte is None or attempt.dispatch_at <= lte

        ordered = self.state.calls_newest_first(now)
        selected = [found for found in ordered if wanted(found)]
        page = self._page(ordered, selected, lambda found: str(found[1].call_id), query)
        page["data"] = [call_json(r, a, now, with_transcript="transcript" in expand) for r, a in page["data"]]
        return json_response(200, page)

    def get_call(self, request: ApiRequest, params: dict[str, str], now: datetime) -> ApiResponse:
        recipient, attempt = self._call(params["id"], now)
        return json_response(200, call_json(recipient, attempt, now, with_transcript=True))
