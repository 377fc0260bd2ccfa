"""What a request to Cartesia looks like and what its answer means, free of any HTTP library.

The sync hook (requests) and the async path (httpx) both build requests and read responses through
these functions, so the two cannot drift apart; only their send loops differ.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import math
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from airflow_provider_cartesia.exceptions import (
    CartesiaAnswerMismatchError,
    CartesiaAPIError,
    CartesiaConfigError,
    CartesiaInvalidIdError,
    CartesiaResponseError,
    CartesiaResponseTooLargeError,
    describe_error_body,
    error_class_for_status,
    redact,
)
from airflow_provider_cartesia.retry import DEFAULT_MAX_RETRIES, parse_retry_after, parse_should_retry

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
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""64 MiB: a 5,000-recipient batch is a few MB (1.3 MB from the simulator)."""
MIN_MAX_RESPONSE_BYTES = 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
"""An error body is only quoted (300 characters), so no more than this is read of one."""
READ_CHUNK_BYTES = 64 * 1024
ACCEPT_ENCODING = "gzip"
"""The only content coding asked for, decoded by :class:`BodyReader` on both paths."""
USER_AGENT = f"airflow-provider-cartesia/{VERSION}"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,255}")
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\\@?#]")
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")

ModelT = TypeVar("ModelT")


@dataclass(frozen=True)
class ApiSettings:
    """Everything a request needs, resolved once from the Airflow connection.

    ``api_key`` is excluded from ``repr`` so that logging the settings cannot leak it.
    """

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    api_version: str = DEFAULT_API_VERSION
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    dashboard_url: str = DEFAULT_DASHBOARD_URL
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def headers(self) -> dict[str, str]:
        """Headers sent with every request."""
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Cartesia-Version": self.api_version,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
        }

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def deadline(self) -> float:
        """Seconds one attempt may take in all, the whole body read: the read timeout bounds each read only."""
        return self.connect_timeout + self.read_timeout

    @property
    def direct(self) -> bool:
        """Whether requests skip any proxy from the environment: loopback never goes through one."""
        return is_loopback(urlsplit(self.base_url).hostname or "")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (the only place plain HTTP may carry the key).

    Only ``localhost`` and literal loopback addresses: a name such as ``x.localhost`` is whatever DNS
    or a hosts file says it is.
    """
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_url(raw: str, what: str, conn_id: str) -> tuple[str, str]:
    """``(scheme, host)`` of a URL from the connection, refused unless every HTTP library reads it alike.

    Parsers disagree on backslashes, user info, whitespace and control characters
    (``http://evil.example\\@127.0.0.1`` is 127.0.0.1 to urllib, evil.example to urllib3), so such
    URLs are refused outright, and the host is then checked against urllib3's and httpx's own reading.
    The URL is never quoted back: it may hold a key.
    """
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
        readings = {host, (parse_url(raw).host or "").strip("[]").lower(), _httpx_host(raw)}
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        readings = set()
    if parts.scheme not in ("http", "https") or not host or len(readings) != 1:
        raise CartesiaConfigError(
            f"Connection '{conn_id}': the {what} is not a URL of the form https://host[:port][/path]; "
            f"leave the host empty for {DEFAULT_BASE_URL}"
        )
    return parts.scheme, host


def _httpx_host(url: str) -> str:
    import httpx

    try:
        return httpx.URL(url).host.lower()
    except (httpx.InvalidURL, ValueError):
        return ""


def normalize_base_url(host: str | None, port: int | None = None, conn_id: str = "") -> str:
    """The base URL from a connection's host field: ``https://`` unless it says otherwise.

    A host without a scheme gets ``https://``, or ``http://`` when it is a loopback address (the
    simulator). Plain HTTP to any other host is refused: Cartesia rotates keys seen over HTTP.
    """
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
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


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
        conn_id, "timeout", timeout if timeout is not None else extra.get("timeout"), DEFAULT_READ_TIMEOUT
    )
    retries = _number(
        conn_id,
        "max_retries",
        max_retries if max_retries is not None else extra.get("max_retries"),
        DEFAULT_MAX_RETRIES,
    )
    body_cap = _number(conn_id, "max_response_bytes", extra.get("max_response_bytes"), DEFAULT_MAX_RESPONSE_BYTES)
    if not 0 < read_timeout <= MAX_TIMEOUT:
        raise CartesiaConfigError(
            f"Connection '{conn_id}': 'timeout' must be more than 0 and at most {MAX_TIMEOUT:g} seconds, "
            f"got {read_timeout:g}"
        )
    if retries != int(retries) or not 0 <= retries <= MAX_MAX_RETRIES:
        raise CartesiaConfigError(
            f"Connection '{conn_id}': 'max_retries' must be a whole number from 0 to {MAX_MAX_RETRIES}, got {retries:g}"
        )
    if body_cap != int(body_cap) or body_cap < MIN_MAX_RESPONSE_BYTES:
        raise CartesiaConfigError(
            f"Connection '{conn_id}': 'max_response_bytes' must be a whole number of bytes, at least "
            f"{MIN_MAX_RESPONSE_BYTES:,} (default {DEFAULT_MAX_RESPONSE_BYTES:,}), got {body_cap:g}"
        )
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
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise CartesiaConfigError(
            f"Connection '{conn_id}': extra '{name}' must be a finite number, got {redact(str(value))[:40]!r}"
        )
    return number


def checked_dashboard_url(value: Any, conn_id: str = "") -> str:
    """The ``dashboard_url`` extra, only if a browser may follow it: https, or http to loopback."""
    raw = str(value or DEFAULT_DASHBOARD_URL).strip().rstrip("/")
    if "://" not in raw:
        raise CartesiaConfigError(
            f"Connection '{conn_id}': extra 'dashboard_url' must start with https:// (http:// only for a "
            "loopback address)"
        )
    scheme, host = checked_url(raw, "extra 'dashboard_url'", conn_id)
    if scheme != "https" and not is_loopback(host):
        raise CartesiaConfigError(
            f"Connection '{conn_id}': extra 'dashboard_url' must start with https:// (http:// only for a "
            "loopback address)"
        )
    return raw


def api_path(template: str, **ids: str) -> str:
    """Fill ``{name}`` placeholders of a route with validated, percent-encoded ids.

    An id is opaque to us, but it must stay inside its path segment: ``../x``, ``a/b`` or ``a?b``
    would reach another route, so they are refused rather than merely escaped.
    """
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


def error_from_response(
    settings: ApiSettings,
    method: str,
    path: str,
    status_code: int,
    headers: Mapping[str, str],
    content: bytes,
) -> CartesiaAPIError:
    """The exception for an error response: the class from the status, the text from the body."""
    parts = describe_error_body(content, headers.get("content-type"), (settings.api_key,))
    cls = error_class_for_status(status_code)
    if 300 <= status_code < 400:
        parts["message"] = f"unexpected redirect ({_shown_location(headers, settings)}); check the base URL"
    return cls(
        parts["message"] or "(empty body)",
        status_code=status_code,
        error_code=parts["error_code"],
        title=parts["title"],
        request_id=parts["request_id"],
        method=method,
        path=path,
        conn_id=settings.conn_id,
        retry_after=parse_retry_after(headers),
        should_retry_header=parse_should_retry(headers),
    )


def _shown_location(headers: Mapping[str, str], settings: ApiSettings) -> str:
    """A redirect's target as safe to show: scheme, host and path, redacted (its query may hold anything)."""
    location = headers.get("location")
    if not location:
        return "no location"
    parts = urlsplit(location)
    shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}" if parts.scheme else parts.path
    return redact(_CONTROL.sub("", shown), (settings.api_key,))[:120] or "a location that cannot be shown"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BodyReader:
    """Collects a response body from raw chunks, decoding gzip as it goes, and stops at a size cap.

    Both funnels feed it undecoded bytes, so a small compressed answer that inflates to gigabytes (a
    gzip bomb) is refused once the connection's ``max_response_bytes`` are exceeded, never held whole.
    An error body is only quoted, so past :data:`MAX_ERROR_BODY_BYTES` it is cut instead (:attr:`full`).
    """

    def __init__(
        self, settings: ApiSettings, method: str, path: str, status_code: int, content_encoding: str | None
    ) -> None:
        self.settings, self.method, self.path = settings, method, path
        self.truncate = status_code >= 300
        self.limit = MAX_ERROR_BODY_BYTES if self.truncate else settings.max_response_bytes
        coding = (content_encoding or "identity").strip().lower()
        if coding not in ("identity", "gzip", "x-gzip", "deflate") and not self.truncate:
            raise self._unreadable(f"content-encoding {coding[:40]!r}, which was not asked for (only gzip is)")
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32) if coding in ("gzip", "x-gzip", "deflate") else None
        self.size = 0
        self._parts: list[bytes] = []

    @property
    def full(self) -> bool:
        """Whether an error body reached its cap (reading on is pointless)."""
        return self.truncate and self.size >= self.limit

    def feed(self, chunk: bytes) -> None:
        """Add raw bytes as they arrived; past the cap, an answer raises :class:`CartesiaResponseTooLargeError`."""
        if self._zlib is None:
            self._add(chunk)
            return
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

    def _add(self, data: bytes) -> None:
        room = self.limit - self.size
        if len(data) > room:
            if not self.truncate:
                raise CartesiaResponseTooLargeError(
                    f"the answer is larger than the connection's max_response_bytes ({self.limit:,} bytes "
                    "decoded); reading stopped there",
                    method=self.method,
                    path=self.path,
                    conn_id=self.settings.conn_id,
                )
            data = data[:room]
        self.size += len(data)
        self._parts.append(data)

    def _unreadable(self, reason: str) -> CartesiaResponseError:
        return CartesiaResponseError(
            f"the body could not be decoded: {reason}",
            method=self.method,
            path=self.path,
            conn_id=self.settings.conn_id,
        )

    def content(self) -> bytes:
        return b"".join(self._parts)


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


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a large, acyclic response is parsed or written.

    Parsing 5,000 recipients allocates tens of thousands of objects, which sets off full
    collections; in a process that imported Airflow each one scans the whole heap and frees nothing,
    since the parsed objects hold no cycles (reference counting frees them). The collector is
    restored afterwards and runs as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_model(model: type[ModelT], content: bytes, method: str, path: str, conn_id: str = "") -> ModelT:
    """Parse a 2xx body into ``model``; a body that is not JSON or does not fit names what was wrong.

    The message lists field locations and pydantic's reason, never the offending values (they may be
    phone numbers).
    """
    from pydantic import ValidationError

    try:
        with cyclic_gc_paused():
            return model.model_validate_json(content)  # type: ignore[attr-defined]
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False)[:5]:
            loc = ".".join(str(p) for p in err["loc"]) or "(body)"
            problems.append(f"{loc}: {err['msg']}")
        more = f" and {exc.error_count() - 5} more" if exc.error_count() > 5 else ""
        if any(e["type"].startswith("json") for e in exc.errors(include_url=False, include_input=False)):
            what = f"the body is not valid JSON ({len(content):,} bytes; {problems[0]})"
        else:
            what = f"the body does not fit {model.__name__}: {'; '.join(problems)}{more}"
        raise CartesiaResponseError(what, method=method, path=path, conn_id=conn_id) from None
