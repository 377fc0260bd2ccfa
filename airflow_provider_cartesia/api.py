"""Requests to Cartesia and what their answers mean, free of any HTTP library: both funnels of the hook
(requests, httpx) share everything here and write only the socket I/O twice."""

from __future__ import annotations

import email.utils
import ipaddress
import json
import math
import random
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from airflow_provider_cartesia.exceptions import (
    CartesiaAnswerMismatchError,
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
    CartesiaResponseTooLargeError,
    CartesiaServerError,
    CartesiaTransportError,
    is_transient,
    redact,
)

VERSION = "0.1.0"
CONN_TYPE = "cartesia"
DEFAULT_CONN_ID = "cartesia_default"
DEFAULT_BASE_URL = "https://api.cartesia.ai"
DEFAULT_API_VERSION = "2026-03-01"
SUPPORTED_API_VERSIONS = ("2026-03-01", "2026-08-14")
DEFAULT_DASHBOARD_URL = "https://play.cartesia.ai"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 60.0
MAX_TIMEOUT = 3600.0
MAX_MAX_RETRIES = 10
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # a 5,000-recipient batch is a few MB
MIN_MAX_RESPONSE_BYTES = 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024  # an error body is only quoted (MAX_BODY_CHARS)
MAX_BODY_CHARS = 300
READ_CHUNK_BYTES = 64 * 1024
USER_AGENT = f"airflow-provider-cartesia/{VERSION}"
# The retry policy: capped exponential backoff with jitter, or the server's Retry-After up to a cap.
DEFAULT_MAX_RETRIES = 4
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0  # longer is the wait's poll interval's job, not a blocked call's

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,255}")
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\\@?#]")
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"\s+")

ModelT = TypeVar("ModelT")
ErrorT = TypeVar("ErrorT", bound=CartesiaAPIError)


@dataclass(frozen=True)
class ApiSettings:
    """Everything a request needs, resolved once from the Airflow connection (``repr`` hides the key)."""

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    api_version: str = DEFAULT_API_VERSION
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    dashboard_url: str = DEFAULT_DASHBOARD_URL
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    @property
    def deadline(self) -> float:
        """Seconds one attempt may take in all: the read timeout only bounds each read."""
        return self.connect_timeout + self.read_timeout

    @property
    def direct(self) -> bool:
        """Whether requests skip any proxy from the environment: loopback never goes through one."""
        return is_loopback(urlsplit(self.base_url).hostname or "")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a literal loopback address (``x.localhost`` is whatever DNS says)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_url(raw: str, what: str, conn_id: str) -> tuple[str, str]:
    """``(scheme, host)`` of a URL from the connection, refused unless urllib, urllib3 and httpx read the
    same host (see docs/security.md). The URL is never quoted back: it may hold a key."""
    import httpx  # this module loads with get_provider_info: kept light
    from urllib3.util import parse_url

    if _UNSAFE_URL_CHARS.search(raw):
        raise CartesiaConfigError(
            f"Connection '{conn_id}': the {what} holds a character a URL here may not have (a space, a control "
            "character, a backslash, '@', '?' or '#'); write it as https://host[:port][/path], with the API key "
            "in the password field"
        )
    parts = urlsplit(raw)
    try:
        host = (parts.hostname or "").lower()
        readings = {host, (parse_url(raw).host or "").strip("[]").lower(), httpx.URL(raw).host.lower()}
        parts.port  # noqa: B018 - raises on a port that is not a number
    except (httpx.InvalidURL, ValueError):
        readings = set()
    if parts.scheme not in ("http", "https") or not host or len(readings) != 1:
        raise CartesiaConfigError(
            f"Connection '{conn_id}': the {what} is not a URL of the form https://host[:port][/path]; "
            f"leave the host empty for {DEFAULT_BASE_URL}"
        )
    return parts.scheme, host


def normalize_base_url(host: str | None, port: int | None = None, conn_id: str = "") -> str:
    """The base URL from a connection's host field; plain HTTP only to loopback (Cartesia rotates keys seen
    over HTTP). A host without a scheme gets ``https://``, or ``http://`` for loopback."""
    raw = (host or "").strip() or DEFAULT_BASE_URL
    if "://" not in raw:
        bare = urlsplit(f"//{raw}").hostname or raw
        raw = ("http://" if is_loopback(bare) else "https://") + raw
    scheme, hostname = checked_url(raw, "host (base URL)", conn_id)
    if scheme == "http" and not is_loopback(hostname):
        raise CartesiaConfigError(
            f"Connection '{conn_id}': refusing to send the API key over plain HTTP to {hostname}. "
            "Cartesia rotates keys seen over HTTP; use https:// (plain HTTP is allowed only for loopback "
            "addresses such as the bundled simulator)"
        )
    parts = urlsplit(raw)
    port_part = f":{port}" if port and parts.port is None else ""
    return f"{parts.scheme}://{parts.netloc}{port_part}{parts.path.rstrip('/')}"


def settings_from_connection(conn: Any, *, timeout: float | None = None, max_retries: int | None = None) -> ApiSettings:
    """Validate an Airflow connection of type ``cartesia`` and resolve it into :class:`ApiSettings`."""
    conn_id = getattr(conn, "conn_id", None) or ""
    extra: Mapping[str, Any] = conn.extra_dejson or {}
    api_key = (conn.password or extra.get("api_key") or "").strip()
    if not api_key:
        raise CartesiaConfigError(
            f"Connection '{conn_id}' has no API key: put the Cartesia API key (sk_car_...) in its "
            "password field (labelled 'API key' in the UI)"
        )
    if not _KEY_CHARS.fullmatch(api_key):
        # Never quoted: an HTTP library's complaint about such a header value shows the whole key.
        raise CartesiaConfigError(
            f"Connection '{conn_id}': the API key holds spaces, line breaks or non-ASCII characters; paste "
            "the key (sk_car_...) alone into the password field"
        )
    version = str(extra.get("api_version") or DEFAULT_API_VERSION)
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", version):  # ASCII: it becomes a header
        raise CartesiaConfigError(
            f"Connection '{conn_id}': api_version {version!r} is not a date; use one of "
            f"{', '.join(SUPPORTED_API_VERSIONS)}"
        )
    read_timeout = _number(
        conn_id, "timeout", extra.get("timeout") if timeout is None else timeout, DEFAULT_READ_TIMEOUT
    )
    retries = _number(
        conn_id, "max_retries", extra.get("max_retries") if max_retries is None else max_retries, DEFAULT_MAX_RETRIES
    )
    body_cap = _number(conn_id, "max_response_bytes", extra.get("max_response_bytes"), DEFAULT_MAX_RESPONSE_BYTES)
    for name, number, ok, rule in (
        ("timeout", read_timeout, 0 < read_timeout <= MAX_TIMEOUT, f"more than 0 and at most {MAX_TIMEOUT:g} seconds"),
        ("max_retries", retries, retries in range(MAX_MAX_RETRIES + 1), f"a whole number from 0 to {MAX_MAX_RETRIES}"),
        (
            "max_response_bytes",
            body_cap,
            body_cap == int(body_cap) >= MIN_MAX_RESPONSE_BYTES,
            f"a whole number of bytes, at least {MIN_MAX_RESPONSE_BYTES:,} (default {DEFAULT_MAX_RESPONSE_BYTES:,})",
        ),
    ):
        if not ok:
            raise CartesiaConfigError(f"Connection '{conn_id}': '{name}' must be {rule}, got {number:g}")
    return ApiSettings(
        conn_id=conn_id,
        base_url=normalize_base_url(conn.host, conn.port, conn_id),
        api_key=api_key,
        api_version=version,
        connect_timeout=min(DEFAULT_CONNECT_TIMEOUT, read_timeout),
        read_timeout=read_timeout,
        max_retries=int(retries),
        dashboard_url=checked_dashboard_url(extra.get("dashboard_url"), conn_id),
        max_response_bytes=int(body_cap),
    )


def _number(conn_id: str, name: str, value: Any, default: float) -> float:
    """An extra that must be a finite number (a JSON number or its text); ``default`` when unset."""
    if value is None or value == "":
        return float(default)
    number = None if isinstance(value, bool) else _finite(value)
    if number is None:
        raise CartesiaConfigError(
            f"Connection '{conn_id}': extra '{name}' must be a finite number, got {redact(str(value))[:40]!r}"
        )
    return number


def checked_dashboard_url(value: Any, conn_id: str = "") -> str:
    """The ``dashboard_url`` extra, only if a browser may follow it: https, or http to loopback."""
    raw = str(value or DEFAULT_DASHBOARD_URL).strip().rstrip("/")
    scheme, host = checked_url(raw, "extra 'dashboard_url'", conn_id) if "://" in raw else ("", "")
    if scheme != "https" and not is_loopback(host):
        raise CartesiaConfigError(
            f"Connection '{conn_id}': extra 'dashboard_url' must start with https:// (http:// only for a "
            "loopback address)"
        )
    return raw


def api_path(template: str, **ids: str) -> str:
    """Fill ``{name}`` placeholders of a route with ids, percent-encoded; ids that could reach another
    route (``../x``, ``a/b``, ``a?b``) are refused rather than escaped."""
    values = {}
    for name, value in ids.items():
        if not isinstance(value, str) or not _ID.fullmatch(value) or value in (".", ".."):
            shown = redact(value) if isinstance(value, str) and len(value) <= 80 else type(value).__name__
            raise CartesiaInvalidIdError(
                f"{name} {shown!r} is not a valid Cartesia id: ids are letters, digits and '_', '-', '.', ':', "
                "starting with a letter or digit (for example acb_123)"
            )
        values[name] = quote(value, safe="")
    return template.format(**values)


@dataclass(frozen=True)
class ApiCall:
    """One request as both funnels send it; it also names its failures (never with the key)."""

    settings: ApiSettings
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    body: Any = None
    idempotent: bool = True

    @property
    def url(self) -> str:
        return self.settings.base_url + self.path

    @cached_property
    def query(self) -> dict[str, str] | None:
        return {k: _query_value(v) for k, v in (self.params or {}).items() if v is not None} or None

    @cached_property
    def data(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body, default=_json_default).encode()

    def headers(self) -> dict[str, str]:
        """Headers of the request (gzip is the only content coding asked for)."""
        headers = {
            "Authorization": f"Bearer {self.settings.api_key}",
            "Cartesia-Version": self.settings.api_version,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "gzip",
        }
        if self.data is not None:
            headers["Content-Type"] = "application/json"
        return headers

    def error(self, cls: type[ErrorT], message: str, **details: Any) -> ErrorT:
        return cls(message, method=self.method, path=self.path, conn_id=self.settings.conn_id, **details)

    def transport_error(self, exc: BaseException, what: str, *, sent: bool = True) -> CartesiaTransportError:
        """No answer; a dialing request that may have arrived becomes 'outcome unknown' (never resent)."""
        cls = CartesiaTransportError if self.idempotent or not sent else CartesiaCreateOutcomeUnknownError
        return self.error(cls, f"{what} ({type(exc).__name__}, base URL {self.settings.base_url})", sent=sent)

    def deadline_passed(self, exc: BaseException) -> CartesiaTransportError:
        what = f"no complete answer within the {self.settings.deadline:g} s deadline (connect plus read timeout)"
        return self.transport_error(exc, what + "; the server kept the connection busy without finishing")

    def read_timeout(self, exc: BaseException) -> CartesiaTransportError:
        return self.transport_error(exc, f"no response within the {self.settings.read_timeout:g} s read timeout")


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


class BodyReader:
    """Turns one response into its body or its error: gunzips as the raw chunks arrive and stops at a cap.

    Fed undecoded bytes, so a gzip bomb is refused past ``max_response_bytes``, never held whole. An
    error body is only quoted, so past :data:`MAX_ERROR_BODY_BYTES` it is cut instead (:meth:`feed`).
    """

    def __init__(self, call: ApiCall, status_code: int, headers: Mapping[str, str]) -> None:
        self.call, self.status_code, self.headers = call, status_code, headers
        self.truncate = status_code >= 300
        self.limit = MAX_ERROR_BODY_BYTES if self.truncate else call.settings.max_response_bytes
        coding = (headers.get("content-encoding") or "identity").strip().lower()
        if coding not in ("identity", "gzip", "x-gzip", "deflate") and not self.truncate:
            raise self._unreadable(f"content-encoding {coding[:40]!r}, which was not asked for (only gzip is)")
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32) if coding in ("gzip", "x-gzip", "deflate") else None
        self.size = 0
        self._parts: list[bytes] = []

    @property
    def full(self) -> bool:
        return self.truncate and self.size >= self.limit

    def feed(self, chunk: bytes) -> bool:
        """Add raw bytes as they arrived; True once reading on is pointless (an error body at its cap)."""
        if self._zlib is None:
            self._add(chunk)
            return self.full
        data = chunk
        while data and not self.full:
            try:
                decoded = self._zlib.decompress(data, READ_CHUNK_BYTES)
            except zlib.error as exc:
                raise self._unreadable(f"the gzip body is corrupt ({exc})") from None
            self._add(decoded)
            data = self._zlib.unconsumed_tail
            if self._zlib.eof and self._zlib.unused_data.strip(b"\0"):
                data, self._zlib = self._zlib.unused_data + data, zlib.decompressobj(zlib.MAX_WBITS | 32)
        return self.full

    def _add(self, data: bytes) -> None:
        room = self.limit - self.size
        if len(data) > room:
            if not self.truncate:
                raise self.call.error(
                    CartesiaResponseTooLargeError,
                    f"the answer is larger than the connection's max_response_bytes ({self.limit:,} bytes "
                    "decoded); reading stopped there",
                )
            data = data[:room]
        self.size += len(data)
        self._parts.append(data)

    def _unreadable(self, reason: str) -> CartesiaResponseError:
        return self.call.error(CartesiaResponseError, f"the body could not be decoded: {reason}")

    def result(self) -> bytes:
        """The body of a 2xx answer; any other status raises its error."""
        content = b"".join(self._parts)
        if not self.truncate:
            return content
        call, headers = self.call, self.headers
        parts = describe_error_body(content, headers.get("content-type"), (call.settings.api_key,))
        if self.status_code < 400:
            parts["message"] = f"unexpected redirect ({_shown_location(headers, call.settings)}); check the base URL"
        raise call.error(
            error_class(self.status_code),
            parts.pop("message") or "(empty body)",
            status_code=self.status_code,
            **parts,
            retry_after=parse_retry_after(headers),
            should_retry_header=parse_should_retry(headers),
        )


_STATUS_ERRORS: dict[int, type[CartesiaAPIError]] = {
    400: CartesiaBadRequestError,
    422: CartesiaBadRequestError,
    401: CartesiaAuthError,
    403: CartesiaAuthError,
    402: CartesiaPaymentRequiredError,
    404: CartesiaNotFoundError,
    429: CartesiaRateLimitError,
}


def error_class(status_code: int) -> type[CartesiaAPIError]:
    """The one map from an HTTP error status to its exception class."""
    return _STATUS_ERRORS.get(status_code) or (CartesiaServerError if status_code >= 500 else CartesiaAPIError)


def describe_error_body(body: bytes, content_type: str | None, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """``error_code``, ``title``, ``message`` and ``request_id`` of an error body (Cartesia JSON, plain
    text or a proxy's HTML page), redacted and short."""
    text = body.decode("utf-8", errors="replace").strip()
    parts: dict[str, Any] = {"error_code": None, "title": None, "message": None, "request_id": None}
    try:
        data = json.loads(text) if text[:1] in "{[" else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        if data.get("message") is None:
            data["message"] = data.get("detail") or data.get("error") or text
        for key in parts:
            value = data.get(key)
            parts[key] = redact(str(value), secrets)[:MAX_BODY_CHARS] if value is not None else None
        if isinstance(data.get("request_id"), str) and _UUID.fullmatch(data["request_id"]):
            parts["request_id"] = data["request_id"]  # a UUID holds no phone number; kept whole for support
        return parts
    if "html" in (content_type or "").lower() or text[:1] == "<":
        match = _HTML_TITLE.search(text)
        page = match.group(1) if match else _TAGS.sub(" ", text)
        page = redact(_SPACES.sub(" ", page).strip(), secrets)[:120] or "an HTML page"
        parts["message"] = f"an HTML page instead of a Cartesia error (a proxy or wrong host?): {page}"
        return parts
    if ": " in text and "\n" not in text[:200]:
        title, _, text = text.partition(": ")
        parts["title"] = redact(title, secrets)[:MAX_BODY_CHARS]
    parts["message"] = redact(_SPACES.sub(" ", text), secrets)[:MAX_BODY_CHARS] or "(empty body)"
    return parts


def _shown_location(headers: Mapping[str, str], settings: ApiSettings) -> str:
    """A redirect's target, safe to show: scheme, host and path, redacted (its query may hold anything)."""
    location = headers.get("location")
    if not location:
        return "no location"
    parts = urlsplit(location)
    shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}" if parts.scheme else parts.path
    return redact(_CONTROL.sub("", shown), (settings.api_key,))[:120] or "a location that cannot be shown"


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); None when absent,
    unparseable, not finite, negative or above :data:`MAX_RETRY_AFTER`."""
    lowered = {k.lower(): v for k, v in headers.items()}
    seconds = _finite(lowered.get("retry-after-ms"))
    seconds = seconds / 1000 if seconds is not None else None
    value = lowered.get("retry-after", "").strip()
    if seconds is None and value:
        seconds = _finite(value)
        if seconds is None:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    return seconds if seconds is not None and 0 <= seconds <= MAX_RETRY_AFTER else None


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_should_retry(headers: Mapping[str, str]) -> bool | None:
    """The server's ``x-should-retry`` verdict: True, False, or None when it gave none."""
    value = next((v for k, v in headers.items() if k.lower() == "x-should-retry"), None)
    return None if value is None else value.strip().lower() == "true"


def should_retry(error: BaseException, *, idempotent: bool = True) -> bool:
    """Whether a failed request may be sent again: transient, and safe to resend.

    A dialing request (create, retry) is resent only when it provably never left: a connect failure.
    Anything else may have reached Cartesia, which has no idempotency key.
    """
    if isinstance(error, CartesiaCreateOutcomeUnknownError):
        return False
    if isinstance(error, CartesiaTransportError):
        return idempotent or not error.sent
    return idempotent and is_transient(error)


def retry_delay(
    retries_taken: int, error: BaseException | None = None, *, jitter: Callable[[], float] = random.random
) -> float:
    """Seconds before retry ``retries_taken + 1``: the server's Retry-After, else 0.5, 1, 2 ... 8 s
    scaled by a jitter factor in (0.75, 1.0]."""
    if isinstance(error, CartesiaAPIError) and error.retry_after is not None:
        return error.retry_after
    return min(INITIAL_RETRY_DELAY * 2**retries_taken, MAX_RETRY_DELAY) * (1 - 0.25 * jitter())


def check_answer_id(requested: str, answered: object, what: str, method: str, path: str, conn_id: str = "") -> None:
    """Refuse an answer about another object than the one asked for (a misrouting proxy or cache)."""
    if answered != requested:
        raise CartesiaAnswerMismatchError(
            f"asked for {what} {requested} but the answer is for {redact(str(answered))[:80]!r}; nothing was "
            "read from it",
            method=method,
            path=path,
            conn_id=conn_id,
        )


def parse_model(model: type[ModelT], content: bytes, method: str, path: str, conn_id: str = "") -> ModelT:
    """Parse a 2xx body into ``model``; the error names field locations and reasons, never values."""
    from pydantic import ValidationError  # this module loads with get_provider_info: kept light

    try:
        return model.model_validate_json(content)  # type: ignore[attr-defined]
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        problems = [f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}" for err in errors[:5]]
        more = f" and {exc.error_count() - 5} more" if exc.error_count() > 5 else ""
        if any(e["type"].startswith("json") for e in errors):
            what = f"the body is not valid JSON ({len(content):,} bytes; {problems[0]})"
        else:
            what = f"the body does not fit {model.__name__}: {'; '.join(problems)}{more}"
        raise CartesiaResponseError(what, method=method, path=path, conn_id=conn_id) from None
