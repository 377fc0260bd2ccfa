"""Errors raised by the Cartesia provider: one rooted tree (statuses map to classes in :func:`api.error_class`).

::

    CartesiaError
    ├── CartesiaConfigError, CartesiaInvalidIdError     unusable connection or id
    ├── CartesiaAPIError                                a request failed (status_code, error_code, ...)
    │   ├── BadRequest, Auth, PaymentRequired, NotFound, RateLimit, Server (by status)
    │   ├── CartesiaResponseError                       unreadable 2xx (TooLarge, AnswerMismatch)
    │   └── CartesiaTransportError                      no response (CreateOutcomeUnknown: never resent)
    ├── CartesiaCancelError                             some batches of a list could not be cancelled
    └── CartesiaWarehouseError                          a write failed (SchemaError: unusable table)

:func:`is_permanent` is the one answer to "may asking again succeed?". Messages never carry the API key
or phone numbers (:func:`redact`), nor a database driver's message about a write.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_PHONE = re.compile(r"\+?\b[1-9]\d{6,14}\b")
_API_KEY = re.compile(r"sk_car_[A-Za-z0-9_\-]+")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove API keys, the given secrets and phone-number-like digit runs from ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _API_KEY.sub("sk_car_***", text)
    return _PHONE.sub("<phone>", text)


class CartesiaError(Exception):
    """Root of every error this provider raises on purpose."""


class CartesiaConfigError(CartesiaError):
    """The Cartesia connection cannot be used as configured; the message says which field to fix."""


class CartesiaInvalidIdError(CartesiaError, ValueError):
    """An id that is empty or could leave its URL path segment (``../x``, ``a/b``, ``a?b``)."""


class CartesiaAPIError(CartesiaError):
    """A request to the Cartesia API failed; its message ends with :attr:`hint`.

    :param status_code: HTTP status, or ``None`` when no response arrived.
    :param error_code: Cartesia's machine-readable code (may be ``None``).
    :param request_id: Cartesia's request id, to quote to their support.
    :param path: path of the failed request (ids only, never a query string).
    :param retry_after: seconds the server asked us to wait (``Retry-After``), when it said so.
    :param should_retry_header: the server's ``x-should-retry``, when it sent one.
    """

    hint = ""  # what the user can do about this error

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: str | None = None,
        title: str | None = None,
        request_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
        conn_id: str | None = None,
        retry_after: float | None = None,
        should_retry_header: bool | None = None,
    ) -> None:
        self.status_code = status_code
        self.error_code = error_code
        self.title = title
        self.message = message
        self.request_id = request_id
        self.method = method
        self.path = path
        self.conn_id = conn_id
        self.retry_after = retry_after
        self.should_retry_header = should_retry_header
        where = f"{self.method} {self.path}" if self.method and self.path else "Cartesia request"
        status = f" returned HTTP {self.status_code}" if self.status_code is not None else " failed"
        code = f" [{self.error_code}]" if self.error_code else ""
        title = f" {self.title}:" if self.title and self.title not in self.message else ""
        request = f" (request_id {self.request_id})" if self.request_id else ""
        hint = self._hint()
        super().__init__(f"{where}{status}{code}:{title} {self.message}{request}" + (f". {hint}" if hint else ""))

    def _hint(self) -> str:
        return self.hint


class CartesiaBadRequestError(CartesiaAPIError):
    """Cartesia rejected the request as invalid (400 or 422). Retrying the same request cannot help."""


class CartesiaAuthError(CartesiaAPIError):
    """The API key was refused (401) or may not access this resource (403)."""

    def _hint(self) -> str:
        conn = f"Airflow connection '{self.conn_id}'" if self.conn_id else "the Airflow connection"
        if self.status_code == 403:
            return f"Check that the API key in {conn} belongs to the organization that owns this resource"
        return (
            f"Check the API key in the password field of {conn}: it must be a current, non-admin "
            "Cartesia key (sk_car_...)"
        )


class CartesiaPaymentRequiredError(CartesiaAPIError):
    """The organization reached a usage or plan limit (402)."""


class CartesiaNotFoundError(CartesiaAPIError):
    """The batch, call, agent or phone number does not exist for this API key (404)."""

    hint = "Check the id, and that the connection's API key belongs to the organization that owns it"


class CartesiaRateLimitError(CartesiaAPIError):
    """Cartesia's concurrency limit was hit (429)."""


class CartesiaServerError(CartesiaAPIError):
    """Cartesia or a proxy in front of it failed (5xx)."""


class CartesiaResponseError(CartesiaAPIError):
    """A successful status whose body is not JSON, or does not fit the documented model."""

    hint = (
        "The API answered in a shape this provider does not understand; check the connection's "
        "api_version and the base URL (a proxy or a wrong host answers like this)"
    )


class CartesiaResponseTooLargeError(CartesiaResponseError):
    """The body grew past the connection's ``max_response_bytes`` once decoded; reading stopped there."""

    hint = (
        "A 5,000-recipient batch is a few MB; if a real answer is this large, raise the connection's "
        "max_response_bytes extra, otherwise check the base URL"
    )


class CartesiaAnswerMismatchError(CartesiaResponseError):
    """The answer describes another batch or call than the one requested; it is never used."""

    hint = "Check the base URL and any proxy or cache in front of the API: it answers for other objects"


class CartesiaTransportError(CartesiaAPIError):
    """No HTTP response: the host was unreachable, the connection dropped, or a timeout expired.

    :param sent: whether the request may have reached the server (False only for connect failures).
    """

    def __init__(self, message: str, *, sent: bool = True, **kwargs: object) -> None:
        self.sent = sent
        super().__init__(message, **kwargs)  # type: ignore[arg-type]

    hint = "Check the connection's base URL and that the host is reachable from the worker"


class CartesiaCreateOutcomeUnknownError(CartesiaTransportError):
    """A request that dials (create or retry a batch) may have reached Cartesia, but no answer came back.
    Never resent: Cartesia has no idempotency key."""

    def _hint(self) -> str:
        if self.path and self.path.endswith("/retry"):
            return (
                "The batch's failed recipients may have been re-queued. It was not sent again, because Cartesia "
                "has no idempotency key and a second retry could dial recipients twice: get the batch and check "
                "its retry_count before retrying it again"
            )
        return (
            "The batch may have been created. It was not sent again, because Cartesia has no idempotency "
            "key and a second create would dial every recipient twice: list the batches (newest first) "
            "and look for this batch's name before creating it again"
        )


class CartesiaCancelError(CartesiaError):
    """Some batches of a list could not be cancelled (every one was tried).

    :param failures: ``{batch_id: error}`` for each batch that could not be cancelled.
    """

    def __init__(self, message: str, *, failures: dict[str, BaseException] | None = None) -> None:
        self.failures = dict(failures or {})
        super().__init__(message)


class CartesiaWarehouseError(CartesiaError):
    """Writing a batch's rows failed; its previous rows were kept. The message never quotes values.

    :param table: the target table, as given.
    :param batch_id: the batch being written, when the failure concerns one.
    :param kind: the database driver's exception class (``UniqueViolation``, ``OperationalError``, ...).
    :param code: the SQLSTATE or the driver's error number, when it gives one.
    """

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        batch_id: str | None = None,
        kind: str | None = None,
        code: str | None = None,
    ) -> None:
        self.table = table
        self.batch_id = batch_id
        self.kind = kind
        self.code = code
        super().__init__(message)


class CartesiaWarehouseSchemaError(CartesiaWarehouseError):
    """The table name is not a safe identifier, or the table is missing or lacks columns; retrying cannot help."""


PERMANENT_STATUSES = frozenset({400, 401, 402, 403, 404, 422})  # whatever x-should-retry says
TRANSIENT_STATUSES = frozenset({408, 429})  # and every 5xx


def is_permanent(error: BaseException) -> bool:
    """Whether asking again cannot succeed (the table is in docs/troubleshooting.md); a non-:class:`CartesiaError`
    is a bug, not an outage: neither permanent nor transient."""
    if isinstance(
        error,
        (
            CartesiaConfigError,
            CartesiaInvalidIdError,
            CartesiaWarehouseSchemaError,
            CartesiaCreateOutcomeUnknownError,
            CartesiaResponseTooLargeError,
            CartesiaAnswerMismatchError,
        ),
    ):
        return True
    if not isinstance(error, CartesiaAPIError) or isinstance(error, CartesiaTransportError):
        return False
    status = error.status_code
    if status is None:
        return False
    if status in PERMANENT_STATUSES:
        return True
    if error.should_retry_header is not None:
        return not error.should_retry_header
    return not (status in TRANSIENT_STATUSES or status >= 500)


def is_transient(error: BaseException) -> bool:
    """Whether the same request may succeed later: a :class:`CartesiaError` that is not :func:`is_permanent`."""
    return isinstance(error, CartesiaError) and not is_permanent(error)
