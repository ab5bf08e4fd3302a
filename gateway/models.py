"""Pydantic wire models: requests, results, sessions, errors; the OpenAPI source."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SESSION_ID_PATTERN = SESSION_ID_RE.pattern


class Request(BaseModel):
    """Base of request bodies: unknown fields and type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Limits(Request):
    """Sandbox limits of one session. ``None`` means the server default."""

    memory_mb: int | None = Field(None, ge=32, description="memory limit (swap included), MiB")
    cpus: float | None = Field(None, gt=0, le=64, allow_inf_nan=False, description="CPU quota")
    pids: int | None = Field(None, ge=32, description="maximum processes and threads")
    disk_mb: int | None = Field(None, ge=1, description="writable scratch space, MiB")


class CreateSession(Request):
    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN)
    limits: Limits | None = None
    env: dict[str, str] | None = Field(None, description="kernel env; allowlisted keys only")


class ExecuteRequest(Request):
    code: str
    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False, description="seconds")
    stdin: list[str] | None = Field(None, description="answers to input() calls, in order")


class ExecuteStatus(StrEnum):
    ok = "ok"
    error = "error"
    timeout = "timeout"
    memory_exceeded = "memory_exceeded"
    dead = "dead"
    interrupted = "interrupted"


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


class ExecuteResult(BaseModel):
    """The whole answer to one cell, with the state contract spelled out."""

    session_id: str
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


class SessionState(StrEnum):
    starting = "starting"
    idle = "idle"
    busy = "busy"
    restarting = "restarting"
    dead = "dead"
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


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    version: str
    launcher: str
    registry: str
    sessions: int
    max_sessions: int
    pool_size: int = Field(0, description="started kernels ready for new sessions")
    default_limits: Limits
    max_limits: Limits
    checks: dict[str, str] = {}


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
