"""What a request to Cartesia looks like and what its answer means, free of any HTTP library.

The sync hook (requests) and the async path (httpx) both build requests and read responses through
these functions, so the two cannot drift apart; only their send loops differ.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from airflow_provider_cartesia.exceptions import (
    CartesiaAPIError,
    CartesiaConfigError,
    CartesiaInvalidIdError,
    CartesiaResponseError,
    describe_error_body,
    error_class_for_status,
    redact,
)
from airflow_provider_cartesia.get_provider_info import (
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
    DEFAULT_DASHBOARD_URL,
    SUPPORTED_API_VERSIONS,
    VERSION,
)
from airflow_provider_cartesia.retry import DEFAULT_MAX_RETRIES, parse_retry_after, parse_should_retry

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 60.0
USER_AGENT = f"airflow-provider-cartesia/{VERSION}"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,255}")

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

    def headers(self) -> dict[str, str]:
        """Headers sent with every request."""
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Cartesia-Version": self.api_version,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }

    def url(self, path: str) -> str:
        return self.base_url + path


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (the only place plain HTTP may carry the key)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_base_url(host: str | None, port: int | None = None, conn_id: str = "") -> str:
    """The base URL from a connection's host field: ``https://`` unless it says otherwise.

    A host without a scheme gets ``https://``, or ``http://`` when it is a loopback address (the
    simulator). Plain HTTP to any other host is refused: Cartesia rotates keys seen over HTTP.
    """
    raw = (host or "").strip() or DEFAULT_BASE_URL
    if "://" not in raw:
        bare = urlsplit(f"//{raw}").hostname or raw
        raw = ("http://" if is_loopback(bare) else "https://") + raw
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CartesiaConfigError(
            f"Connection '{conn_id}': host {raw!r} is not a URL; set it to {DEFAULT_BASE_URL} or leave it empty"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise CartesiaConfigError(
            f"Connection '{conn_id}': refusing to send the API key over plain HTTP to {parts.hostname}. "
            "Cartesia rotates keys seen over HTTP; use https:// (plain HTTP is allowed only for loopback "
            "addresses such as the bundled simulator)"
        )
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
    version = str(extra.get("api_version") or DEFAULT_API_VERSION)
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", version):
        raise CartesiaConfigError(
            f"Connection '{conn_id}': api_version {version!r} is not a date; use one of "
            f"{', '.join(SUPPORTED_API_VERSIONS)}"
        )
    try:
        read_timeout = float(timeout if timeout is not None else extra.get("timeout") or DEFAULT_READ_TIMEOUT)
        retries = int(max_retries if max_retries is not None else extra.get("max_retries", DEFAULT_MAX_RETRIES))
    except (TypeError, ValueError) as exc:
        raise CartesiaConfigError(
            f"Connection '{conn_id}': extras 'timeout' and 'max_retries' must be numbers ({exc})"
        ) from None
    if read_timeout <= 0 or retries < 0:
        raise CartesiaConfigError(f"Connection '{conn_id}': 'timeout' must be positive and 'max_retries' zero or more")
    return ApiSettings(
        conn_id=conn_id,
        base_url=normalize_base_url(conn.host, conn.port, conn_id),
        api_key=api_key,
        api_version=version,
        connect_timeout=min(DEFAULT_CONNECT_TIMEOUT, read_timeout),
        read_timeout=read_timeout,
        max_retries=retries,
        dashboard_url=str(extra.get("dashboard_url") or DEFAULT_DASHBOARD_URL).rstrip("/"),
    )


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
        parts["message"] = f"unexpected redirect ({headers.get('location', 'no location')}); check the base URL"
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
