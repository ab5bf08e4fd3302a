"""Pydantic wire models: requests, results, sessions, errors; the OpenAPI source."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SESSION_ID_PATTERN = SESSION_ID_RE.pattern


class Request(BaseModel):
    """Base of request bodies: unknown fields and type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Limits(Request):
    """Sandbox limits of one session. ``None`` means the server default."""

    # the least an interpreter starts in (a local kernel with its RLIMIT_DATA needs ~100 MiB)
    memory_mb: int | None = Field(None, ge=128, description="memory limit (swap included), MiB")
    cpus: float | None = Field(None, gt=0, le=64, allow_inf_nan=False, description="CPU quota")
    pids: int | None = Field(None, ge=32, description="maximum processes and threads")
    disk_mb: int | None = Field(None, ge=1, description="writable scratch space, MiB")

    @field_validator("memory_mb", "pids", "disk_mb", mode="before")
    @classmethod
    def _integral(cls, value: Any) -> Any:
        """JSON has one number type: 256.0 is the integer 256 (as JSON Schema says)."""
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


class CreateSession(Request):
    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN)
    limits: Limits | None = None
    env: dict[str, str] | None = Field(None, description="kernel env; allowlisted keys only")


class ExecuteRequest(Request):
    code: str
    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False, description="seconds")
    stdin: list[str] | None = Field(None, description="answers to input() calls, in order")
    entrypoint: Literal["main"] | None = Field(
        None, description="after the code, call main() and return its value as JSON in result")
    wait: bool = Field(True, description="false: answer 202 with a run_id at once and run the "
                                         "cell in the background (GET .../runs/{run_id})")


class ExecuteStatus(StrEnum):
    ok = "ok"
    error = "error"
    timeout = "timeout"
    memory_exceeded = "memory_exceeded"
    dead = "dead"
    interrupted = "interrupted"
    restore_failed = "restore_failed"  # the session's snapshot could not be restored


class Output(BaseModel):
    type: Literal["execute_result", "display_data"]
    data: dict[str, Any]
    metadata: dict[str, Any] = {}


class ErrorInfo(BaseModel):
    ename: str
    evalue: str
    traceback: list[str] = []


class FileInfo(BaseModel):
    """A file or directory of a session's workspace; ``path`` is relative to it."""

    path: str
    type: Literal["file", "directory"]
    size: int | None = Field(description="bytes (null for a directory)")
    modified_at: datetime


class FileList(BaseModel):
    files: list[FileInfo]
    truncated: bool = Field(False, description="more entries exist than were listed")


class SkippedVariable(BaseModel):
    name: str
    reason: str


class RestoreReport(BaseModel):
    """What came back when a hibernated session was restored (the first answer after it)."""

    status: Literal["restored", "restore_failed"] = "restored"
    variables: list[str] = Field([], description="globals restored into the new interpreter")
    skipped: list[SkippedVariable] = Field(
        [], description="globals not restored: not serialisable, over snapshot_max_mb, or "
                        "failed to load")
    files: int = Field(0, description="workspace files restored (.packages not counted)")
    packages: int = Field(0, description="installed packages restored (.packages/*.dist-info)")
    error: str | None = Field(None, description="why the restore failed (restore_failed)")


class HibernateResult(BaseModel):
    """The answer to POST /v1/sessions/{id}/hibernate (202)."""

    session_id: str
    state: SessionState
    generation: int
    snapshot_bytes: int
    variables: list[str]
    skipped: list[SkippedVariable]
    files: int
    packages: int


class ExecuteResult(BaseModel):
    """The whole answer to one cell, with the state contract spelled out."""

    session_id: str | None = Field(description="null for a one-shot run (POST /v1/run)")
    execution_count: int | None
    generation: int = Field(description="increments whenever the interpreter is replaced")
    status: ExecuteStatus
    state_preserved: bool = Field(description="whether this session's variables survived the call")
    stdout: str = ""
    stderr: str = ""
    outputs: list[Output] = []
    error: ErrorInfo | None = None
    truncated: bool = False
    duration_ms: float
    files_changed: list[FileInfo] = Field(
        [], description="workspace files the cell created or modified (the first 100 by path)")
    files_changed_truncated: bool = Field(False, description="more files changed than listed")
    result: Any = Field(None, description="main()'s return value (entrypoint), as JSON")
    cpu_ms: float | None = Field(None, description="CPU time the sandbox used during the call")
    memory_peak_mb: float | None = Field(
        None, description="peak memory of the sandbox during the call, MiB")
    tests: TestsReport | None = Field(None, description="graded test cases (POST /v1/run)")
    restored: RestoreReport | None = Field(
        None, description="set on the first answer after a hibernated session was restored")


class SessionState(StrEnum):
    starting = "starting"
    idle = "idle"
    busy = "busy"
    restarting = "restarting"
    dead = "dead"
    hibernated = "hibernated"  # no kernel: its snapshot is in the store, the next call restores
    closed = "closed"


class SessionInfo(BaseModel):
    id: str
    kernel_id: str
    state: SessionState
    generation: int
    created_at: datetime
    last_activity: datetime
    execution_count: int
    queued: int = Field(0, description="calls waiting behind the running one")
    limits: Limits


class SessionList(BaseModel):
    sessions: list[SessionInfo]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Capabilities(BaseModel):
    kernel_libraries: dict[str, str] = Field(
        {}, description="libraries of the kernels and their versions (python included); "
                        "empty until learnt at start-up")
    kernel_blocked_modules: list[str] = Field([], description="modules kernels refuse")
    max_tests: int = Field(0, description="test cases one POST /v1/run may carry")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    version: str
    launcher: str
    launcher_details: dict[str, str] = Field(
        {}, description="the launcher's own state: Docker's env_volume (off, pending, filling, "
                        "ready, none, failed)")
    registry: str
    sessions: int
    max_sessions: int
    pool_size: int = Field(0, description="started kernels ready for new sessions")
    default_limits: Limits
    max_limits: Limits
    checks: dict[str, str] = {}
    capabilities: Capabilities = Capabilities()


# ---------------------------------------------------------------- WebSocket v1 (client → server)
class WsExecute(Request):
    type: Literal["execute"]
    id: str | None = Field(None, max_length=128)
    code: str
    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    stdin: list[str] | None = None


class WsInputReply(Request):
    type: Literal["input_reply"]
    id: str = Field(max_length=128)
    value: str


class WsInterrupt(Request):
    type: Literal["interrupt"]
    id: str | None = None


class WsClientMessage(BaseModel):
    message: WsExecute | WsInputReply | WsInterrupt = Field(discriminator="type")


# ---------------------------------------------------------------- Jupyter kernels API
class JupyterKernelCreate(BaseModel):
    """POST /api/kernels. Jupyter clients send fields of their own (path, ...): ignored."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(None, max_length=64)
    env: dict[str, str] | None = None


# ---------------------------------------------------------------- one-shot runs and tests
Stdin = str | list[str]  # a string is split into lines (as the seeds' input_data)
Compare = Literal["exact", "strip", "whitespace", "regex"]


class TestCase(Request):
    """One graded case: the submission, then ``code``, in a fresh sandbox of its own."""

    __test__ = False  # not a pytest class

    name: str | None = Field(None, max_length=200)
    stdin: Stdin | None = Field(None, description="answers to input(), submission first")
    code: str | None = Field(None, description="run after the submission, same sandbox")
    expected_stdout: str | None = None
    expected_result: Any = Field(None, description="main()'s value must equal this (JSON)")
    compare: Compare = Field("strip", description="how stdout is compared (never substring)")
    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)


class InlineFile(Request):
    """A file placed in a one-shot sandbox's workspace before any code runs."""

    path: str = Field(max_length=1024, description="relative to the workspace, /-separated")
    content_base64: str = Field(description="the file's bytes, base64-encoded")


class RunRequest(Request):
    """POST /v1/run: a stateless run in a fresh sandbox from the warm pool."""

    code: str
    stdin: Stdin | None = Field(None, description="a string (split into lines) or the lines")
    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False, description="seconds")
    limits: Limits | None = None
    entrypoint: Literal["main"] | None = None
    tests: list[TestCase] | None = Field(None, description="at most max_tests (default 50)")
    files: list[InlineFile] | None = Field(
        None, max_length=100,
        description="placed in the workspace of the run's sandbox and of each test's")


class TestResult(BaseModel):
    __test__ = False

    name: str
    passed: bool
    status: ExecuteStatus
    stdout: str = ""
    stderr: str = ""
    expected_stdout: str | None = None
    result: Any = None
    diff: str | None = Field(None, description="a short unified diff when stdout differs")
    duration_ms: float
    cpu_ms: float | None = None
    memory_peak_mb: float | None = None
    error: ErrorInfo | None = None


class TestsReport(BaseModel):
    __test__ = False

    passed: int
    failed: int
    results: list[TestResult]


# ---------------------------------------------------------------- async runs (wait: false)
class RunState(StrEnum):
    queued = "queued"
    running = "running"
    finished = "finished"


class RunAccepted(BaseModel):
    run_id: str
    status: RunState
    status_url: str


class RunInfo(BaseModel):
    run_id: str
    status: RunState
    queue_position: int | None = Field(None, description="1: next to run")
    result: ExecuteResult | None = None
    error: ErrorDetail | None = Field(None, description="why a finished run has no result")


# ---------------------------------------------------------------- packages
class PackagesRequest(Request):
    packages: list[str] = Field(
        description="PEP 508 requirements: a name with optional extras, version specifier "
                    "and marker (no URLs, paths or pip options); at most 50")


class PackageJobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class PackageInfo(BaseModel):
    name: str
    version: str


class PackageList(BaseModel):
    packages: list[PackageInfo]


class PackageJobAccepted(BaseModel):
    job_id: str
    status: PackageJobStatus
    status_url: str


class PackageJobInfo(BaseModel):
    job_id: str
    status: PackageJobStatus
    packages: list[str] = Field(description="the requirements asked for")
    installed: list[PackageInfo] = []
    error: str | None = Field(None, description="why the job failed, in plain words")
    log_tail: str = Field("", description="the last lines of the job's log")
    created_at: datetime
    finished_at: datetime | None = None


ExecuteResult.model_rebuild()
