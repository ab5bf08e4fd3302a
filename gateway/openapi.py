"""OpenAPI: the v1 document, generated from the pydantic wire models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway import __version__
from gateway.models import (
    SESSION_ID_PATTERN,
    CreateSession,
    ErrorBody,
    ExecuteRequest,
    ExecuteResult,
    FileInfo,
    FileList,
    Health,
    SessionInfo,
    SessionList,
)

_MODELS: list[type[BaseModel]] = [
    CreateSession, ExecuteRequest, ExecuteResult, SessionInfo, SessionList, ErrorBody, Health,
    FileInfo, FileList,
]
_FILE_ERRORS = {
    "400": "invalid_path: absolute, '..', '.', NUL or control characters, an empty segment, "
           "over 1024 bytes or 255 per segment",
    "404": "session_not_found, file_not_found",
    "409": "not_a_file (a directory, or a symlink, FIFO... the kernel made), not_a_directory",
    "413": "payload_too_large: over max_upload_bytes",
    "507": "workspace_full: over the session's disk_mb",
}


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(model)}}}


def _op(summary: str, ok: int, model: type[BaseModel] | None, body: type[BaseModel] | None = None,
        ) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(ok): {"description": "success", **(_json(model) if model else {})},
        "default": {"description": "error", **_json(ErrorBody)},
    }
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": body is ExecuteRequest, **_json(body)}
    return op


def _files_paths(sid: dict[str, Any]) -> dict[str, Any]:
    """The files API: a session's workspace (the kernel's working directory)."""
    errors = {code: {"description": why, **_json(ErrorBody)} for code, why in _FILE_ERRORS.items()}
    path = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "relative to the workspace, '/'-separated"}
    recursive = {"name": "recursive", "in": "query", "schema": {"type": "boolean",
                                                                "default": False}}
    raw = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}

    def op(summary: str, ok: dict[str, Any], params: list[dict[str, Any]],
           **extra: Any) -> dict[str, Any]:
        return {"summary": summary, "parameters": [sid, *params],
                "responses": {**ok, **errors}, **extra}

    return {
        "/v1/sessions/{session_id}/files": {
            "get": op("List a workspace directory", {"200": {"description": "the entries",
                                                             **_json(FileList)}},
                      [{"name": "path", "in": "query", "schema": {"type": "string",
                                                                  "default": ""}}, recursive]),
            "post": op("Upload files (multipart: 'file' parts, optional 'path' directory); "
                       "creates the session if needed", {"201": {"description": "uploaded",
                                                                 **_json(FileList)}}, [],
                       requestBody={"required": True, "content": {"multipart/form-data": {
                           "schema": {"type": "object", "properties": {
                               "file": {"type": "array", "items": {"type": "string",
                                                                   "format": "binary"}},
                               "path": {"type": "string"}}, "required": ["file"]}}}}),
        },
        "/v1/sessions/{session_id}/files/{path}": {
            "get": op("Download a file (streamed)", {"200": {"description": "its bytes; "
                      "Content-Type guessed from the name", "content": raw}}, [path]),
            "put": op("Upload a file (raw body; parents created); creates the session if "
                      "needed", {"200": {"description": "replaced", **_json(FileInfo)},
                                 "201": {"description": "created", **_json(FileInfo)}},
                      [path], requestBody={"required": True, "content": raw}),
            "delete": op("Delete a file, or a directory with recursive=true",
                         {"204": {"description": "deleted"}}, [path, recursive]),
        },
    }


def build_openapi() -> dict[str, Any]:
    _, schema = models_json_schema(
        [(m, "validation") for m in _MODELS], ref_template="#/components/schemas/{model}"
    )
    sid = {"name": "session_id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": SESSION_ID_PATTERN}}

    def with_id(op: dict[str, Any]) -> dict[str, Any]:
        return {**op, "parameters": [sid]}

    return {
        "openapi": "3.1.0",
        "info": {"title": "exec-gateway", "version": __version__},
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/sessions": {
                "get": _op("List this key's sessions", 200, SessionList),
                "post": _op("Create a session", 201, SessionInfo, CreateSession),
            },
            "/v1/sessions/{session_id}": {
                "get": with_id(_op("Describe a session", 200, SessionInfo)),
                "delete": with_id(_op("Stop the kernel and remove the session", 204, None)),
            },
            "/v1/sessions/{session_id}/execute": {
                "post": with_id(_op("Run one cell", 200, ExecuteResult, ExecuteRequest)),
            },
            "/v1/sessions/{session_id}/interrupt": {
                "post": with_id(_op("Interrupt the running cell", 204, None)),
            },
            "/v1/sessions/{session_id}/restart": {
                "post": with_id(_op("Fresh interpreter, same id", 200, SessionInfo)),
            },
            **_files_paths(sid),
            "/healthz": {"get": {**_op("Liveness and capabilities", 200, Health), "security": []}},
            "/readyz": {"get": _op("Readiness: launcher and registry reachable", 200, Health)},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text exposition"}}}},
        },
    }
