"""Wire models of the exec-gateway API as the client sends and reads them.

They mirror the server's pydantic models (``gateway/models.py``) without importing the server.
``tests/test_client.py`` checks them against a live gateway's ``/v1/openapi.json``: every
field the server sends is read here with a type that accepts it, and every field sent from here
is one the server accepts. Fields the server does not have yet (files, packages, one-shot runs:
issues 13-15) are listed in ``PENDING_FIELDS``; answers keep unknown fields (``extra="allow"``).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ExecuteStatus = Literal["ok", "error", "timeout", "memory_exceeded", "dead", "interrupted",
                        "restore_failed"]
SessionState = Literal["starting", "idle", "busy", "restarting", "dead", "hibernated", "closed"]

IMAGE_TYPES = ("image/png", "image/jpeg")

# Fields the client reads that the server does not send yet, by model (see the module doc).
PENDING_FIELDS: dict[str, set[str]] = {}


class Answer(BaseModel):
    """Base of what the server sends: fields it adds later are kept, not refused."""

    model_config = ConfigDict(extra="allow")


class Request(BaseModel):
    """Base of request bodies: the server refuses unknown fields, so do we."""

    model_config = ConfigDict(extra="forbid")


class Limits(Answer):
    """Sandbox limits of a session; ``None`` means the server's default."""

    memory_mb: int | None = None
    cpus: float | None = None
    pids: int | None = None
    disk_mb: int | None = None


class LimitsRequest(Request):
    memory_mb: int | None = None
    cpus: float | None = None
    pids: int | None = None
    disk_mb: int | None = None


class CreateSession(Request):
    session_id: str | None = None
    limits: LimitsRequest | None = None
    env: dict[str, str] | None = None


class ExecuteRequest(Request):
    code: str
    timeout_s: float | None = None
    stdin: list[str] | None = None


class Output(Answer):
    """One rich output of a cell: ``data`` is a MIME bundle (images base64-encoded)."""

    type: str
    data: dict[str, Any]
    metadata: dict[str, Any] = {}

    @property
    def text(self) -> str | None:
        value = self.data.get("text/plain")
        return value if isinstance(value, str) else None

    @property
    def image(self) -> tuple[str, bytes] | None:
        """(MIME type, decoded bytes) of a PNG or JPEG in this output, else None."""
        for mime in IMAGE_TYPES:
            value = self.data.get(mime)
            if isinstance(value, str):
                return mime, base64.b64decode(value)
        return None


class ErrorInfo(Answer):
    ename: str
    evalue: str
    traceback: list[str] = []


class FileInfo(Answer):
    """A workspace file (needs the server's files API, issue 13)."""

    path: str
    type: str = "file"
    size: int | None = None
    modified_at: datetime | None = None


class SkippedVariable(Answer):
    name: str
    reason: str


class RestoreReport(Answer):
    """What came back when a hibernated session was restored (its first answer after)."""

    status: Literal["restored", "restore_failed"] = "restored"
    variables: list[str] = []
    skipped: list[SkippedVariable] = []
    files: int = 0
    packages: int = 0
    error: str | None = None


class HibernateResult(Answer):
    """The answer to ``Session.hibernate()``: what the snapshot kept."""

    session_id: str
    state: SessionState
    generation: int
    snapshot_bytes: int
    variables: list[str]
    skipped: list[SkippedVariable]
    files: int
    packages: int


class ExecuteResult(Answer):
    """The whole answer to one cell, as the server sends it (REST, or a WebSocket ``result``)."""

    session_id: str | None = None  # None for one-shot runs (/v1/run)
    execution_count: int | None = None
    generation: int
    status: ExecuteStatus
    state_preserved: bool
    stdout: str = ""
    stderr: str = ""
    outputs: list[Output] = []
    error: ErrorInfo | None = None
    truncated: bool = False
    duration_ms: float
    # added by features the server is still growing (kept None until it sends them)
    files_changed: list[FileInfo] | None = None
    files_changed_truncated: bool | None = None
    result: Any = None
    tests: Any = None
    cpu_ms: float | None = None
    memory_peak_mb: float | None = None
    restored: RestoreReport | None = None  # the first answer after a hibernated session's restore


class SessionInfo(Answer):
    id: str
    kernel_id: str
    state: SessionState
    generation: int
    created_at: datetime
    last_activity: datetime
    execution_count: int
    queued: int = 0
    limits: Limits


class SessionList(Answer):
    sessions: list[SessionInfo]


class ErrorDetail(Answer):
    code: str
    message: str
    details: Any = None


class ErrorBody(Answer):
    error: ErrorDetail


class Health(Answer):
    status: str
    version: str
    launcher: str
    launcher_details: dict[str, str] = {}  # Docker: env_volume (filling, ready, ...)
    registry: str
    sessions: int
    max_sessions: int
    pool_size: int = 0
    default_limits: Limits
    max_limits: Limits
    checks: dict[str, str] = {}
    capabilities: dict[str, Any] = {}  # kernel_libraries (name -> version), ...


class PackageJob(Answer):
    """A package install job (needs the server's packages API, issue 14)."""

    job_id: str
    status: str
    status_url: str | None = None
    installed: list[dict[str, Any]] = []
    error: str | None = None
    log_tail: str | None = None


class Result(ExecuteResult):
    """``ExecuteResult`` with helpers: ``text``, ``images``, ``data``, ``raise_for_status()``."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def text(self) -> str | None:
        """The last ``text/plain`` output (e.g. the cell's value ``'42'``), or None."""
        for output in reversed(self.outputs):
            if output.text is not None:
                return output.text
        return None

    @property
    def images(self) -> list[bytes]:
        """Every PNG or JPEG output, decoded, in order."""
        return [image[1] for output in self.outputs if (image := output.image) is not None]

    @property
    def data(self) -> dict[str, Any]:
        """The MIME bundle of the last output (``{}`` when the cell displayed nothing)."""
        return dict(self.outputs[-1].data) if self.outputs else {}

    def raise_for_status(self) -> Result:
        """Raise ``CellError`` unless the cell ran to completion; returns ``self`` otherwise."""
        if self.status != "ok":
            from exec_gateway_client.errors import CellError

            raise CellError(self)
        return self

