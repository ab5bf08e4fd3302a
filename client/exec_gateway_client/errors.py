"""Typed errors: one class per server error code, under one root, plus transport and cell errors.

Every error JSON the server answers (``{"error": {"code", "message", "details"}}``) becomes the
``APIError`` subclass for its code (``SessionNotFound``, ``QueueFull``, ...), or the class for
its HTTP status when the code is new to this client. httpx and websockets errors are
translated at the edge (``TransportError``); a cell that did not finish is a ``CellError``.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exec_gateway_client.models import Result


class GatewayError(Exception):
    """Root of every error this package raises."""


class APIError(GatewayError):
    """The server answered with an error: ``status`` (HTTP), ``code``, ``message``, ``details``;
    ``retry_after_s`` from the ``Retry-After`` header (429/503), if any."""

    status = 0
    code = "error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 details: Any = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.details = details
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class BadRequest(APIError):
    status, code = 400, "bad_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class ValidationFailed(BadRequest):
    code = "validation_error"


class InvalidSessionId(BadRequest):
    code = "invalid_session_id"


class LimitOutOfRange(BadRequest):
    code = "limit_out_of_range"


class InvalidPath(BadRequest):
    """A workspace path the server refuses (files API, issue 13)."""

    code = "invalid_path"


class InvalidRequirement(BadRequest):
    """A package requirement the server refuses (packages API, issue 14)."""

    code = "invalid_requirement"


class EntrypointMissing(BadRequest):
    """``entrypoint="main"`` without a ``main`` (issue 15)."""

    code = "entrypoint_missing"


class Unauthorized(APIError):
    status, code = 401, "unauthorized"


class Forbidden(APIError):
    status, code = 403, "forbidden"


class PackageNotAllowed(Forbidden):
    code = "package_not_allowed"


class NotFound(APIError):
    status, code = 404, "not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class FileNotFound(NotFound):
    code = "file_not_found"


class RunNotFound(NotFound):
    code = "run_not_found"


class JobNotFound(NotFound):
    """No such package job in the session (packages API, issue 14)."""

    code = "job_not_found"


class MethodNotAllowed(APIError):
    status, code = 405, "method_not_allowed"


class Conflict(APIError):
    status, code = 409, "conflict"


class SessionExists(Conflict):
    code = "session_exists"


class NotAFile(Conflict):
    code = "not_a_file"


class NotADirectory(Conflict):
    code = "not_a_directory"


class PayloadTooLarge(APIError):
    status, code = 413, "payload_too_large"


class SnapshotTooLarge(PayloadTooLarge):
    """The workspace alone is over the server's snapshot_max_mb: not hibernated."""

    code = "snapshot_too_large"


class TooManyRequests(APIError):
    """429: the call was refused before it ran; retrying later is safe."""

    status, code = 429, "too_many_requests"


class QueueFull(TooManyRequests):
    code = "queue_full"


class QueueTimeout(TooManyRequests):
    """The call waited longer than the server's ``max_queue_wait_s`` for its turn (never ran)."""

    code = "queue_timeout"


class KeySessionLimit(TooManyRequests):
    code = "key_session_limit"


class Misdirected(APIError):
    """421: a replica-to-replica answer (the session is not served there); a client talking
    to the gateway's public API does not meet it."""

    status, code = 421, "misdirected"


class InternalError(APIError):
    status, code = 500, "internal_error"


class ServiceUnavailable(APIError):
    status, code = 503, "unavailable"


class CapacityExceeded(ServiceUnavailable):
    code = "capacity_exceeded"


class KernelStartFailed(ServiceUnavailable):
    code = "kernel_start_failed"


class LauncherUnavailable(ServiceUnavailable):
    code = "launcher_unavailable"


class RegistryUnavailable(ServiceUnavailable):
    code = "registry_unavailable"


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"


class OwnerUnreachable(ServiceUnavailable):
    code = "owner_unreachable"


class SnapshotStoreUnavailable(ServiceUnavailable):
    code = "snapshot_store_unavailable"


class SessionHibernated(ServiceUnavailable):
    code = "session_hibernated"


class WorkspaceFull(APIError):
    status, code = 507, "workspace_full"


class TransportError(GatewayError):
    """The server could not be reached, or the connection failed mid-call."""


class RequestTimeout(TransportError):
    """No answer within the call's timeout (the cell may still be running on the server)."""


class ConnectionLost(TransportError):
    """A streamed run's WebSocket dropped and could not be resumed; the cell may still run."""


class CellError(GatewayError):
    """A cell that did not run to completion (``Result.raise_for_status()``): ``result`` is the
    whole answer; for a raised exception ``ename``, ``evalue`` and ``traceback`` are set."""

    def __init__(self, result: Result) -> None:
        self.result = result
        error = result.error
        self.ename = error.ename if error else None
        self.evalue = error.evalue if error else None
        self.traceback = "\n".join(error.traceback) if error else ""
        message = f"{error.ename}: {error.evalue}" if error is not None else ""
        if result.status != "error":  # timeout, interrupted, ...: the status says more
            message = (f"cell {result.status} (state_preserved={result.state_preserved})"
                       + (f": {message}" if message else ""))
        super().__init__(message)

    def __str__(self) -> str:
        head = super().__str__()
        return f"{head}\n{self.traceback}" if self.traceback else head


def _subclasses(cls: type[APIError]) -> list[type[APIError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


BY_CODE: dict[str, type[APIError]] = {c.code: c for c in _subclasses(APIError)}
BY_STATUS: dict[int, type[APIError]] = {
    c.status: c for c in APIError.__subclasses__()  # the direct subclasses: one per status
}


def error_class(status: int, code: str | None) -> type[APIError]:
    """The class for a server error: by code, else by HTTP status, else ``APIError``."""
    cls = BY_CODE.get(code or "")
    if cls is not None and cls.status == status:
        return cls
    return BY_STATUS.get(status, APIError)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def from_answer(status: int, body: bytes | str, headers: Mapping[str, str]) -> APIError:
    """The typed error for an error answer (status, raw body, headers)."""
    code, message, details = None, "", None
    try:
        parsed = json.loads(body or b"{}")
        detail = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(detail, dict):
            code = detail.get("code")
            message = str(detail.get("message", ""))
            details = detail.get("details")
    except ValueError:
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        message = text[:500]
    cls = error_class(status, code)
    return cls(message or f"HTTP {status}", status=status, code=code or cls.code,
               details=details, retry_after_s=parse_retry_after(headers.get("Retry-After")))
