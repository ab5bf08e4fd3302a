"""Typed domain errors: each carries an HTTP status and a stable code; handlers map them once."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Root of every error a client may see: ``status`` (HTTP) and ``code`` (JSON)."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(GatewayError):
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
    code = "invalid_path"


class EntrypointMissing(BadRequest):
    code = "entrypoint_missing"


class InvalidRequirement(BadRequest):
    code = "invalid_requirement"


class Unauthorized(GatewayError):
    status, code = 401, "unauthorized"


class Forbidden(GatewayError):
    status, code = 403, "forbidden"


class PackageNotAllowed(Forbidden):
    code = "package_not_allowed"


class NotFound(GatewayError):
    status, code = 404, "not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class FileNotFound(NotFound):
    code = "file_not_found"


class RunNotFound(NotFound):
    code = "run_not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class MethodNotAllowed(GatewayError):
    status, code = 405, "method_not_allowed"


class Conflict(GatewayError):
    status, code = 409, "conflict"


class SessionExists(Conflict):
    code = "session_exists"


class NotAFile(Conflict):
    code = "not_a_file"


class NotADirectory(Conflict):
    code = "not_a_directory"


class PayloadTooLarge(GatewayError):
    status, code = 413, "payload_too_large"


class SnapshotTooLarge(PayloadTooLarge):
    """The workspace alone is over ``snapshot_max_mb``: the session cannot be hibernated."""

    code = "snapshot_too_large"


class WorkspaceFull(GatewayError):
    status, code = 507, "workspace_full"


class QueueFull(GatewayError):
    status, code = 429, "queue_full"


class QueueTimeout(GatewayError):
    status, code = 429, "queue_timeout"


class KeyCapacityExceeded(GatewayError):
    status, code = 429, "key_session_limit"


class CapacityExceeded(GatewayError):
    status, code = 503, "capacity_exceeded"


class KernelStartFailed(GatewayError):
    status, code = 503, "kernel_start_failed"


class LauncherUnavailable(GatewayError):
    status, code = 503, "launcher_unavailable"


class RegistryUnavailable(GatewayError):
    status, code = 503, "registry_unavailable"


class SnapshotStoreUnavailable(GatewayError):
    status, code = 503, "snapshot_store_unavailable"


class SessionHibernated(GatewayError):
    """The session was hibernated while the call waited for its turn: locate it again (the
    handlers do; it restores)."""

    status, code = 503, "session_hibernated"


class ShuttingDown(GatewayError):
    status, code = 503, "shutting_down"


class OwnerUnreachable(GatewayError):
    status, code = 503, "owner_unreachable"


class SessionMoved(OwnerUnreachable):
    """Another replica took the session over while a client was connected here."""


class OwnerDown(OwnerUnreachable):
    """Internal: the owner replica refused the connection, so it never saw the call."""


class Misdirected(OwnerUnreachable):
    """Internal: the replica a call was forwarded to over the replica link did not take it
    (it no longer serves the session, or it is stopping): nothing ran there; the forwarder
    asks the registry again. The one 421 replicas answer each other."""

    status, code = 421, "misdirected"


class KernelDied(Exception):
    """Internal: the kernel process went away while a request was waiting on it."""


class KernelTimeout(Exception):
    """Internal: the kernel did not answer a control/shell request before its deadline."""
