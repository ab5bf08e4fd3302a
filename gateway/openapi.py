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
    Health,
    RunAccepted,
    RunInfo,
    RunRequest,
    SessionInfo,
    SessionList,
)

_MODELS: list[type[BaseModel]] = [
    CreateSession, ExecuteRequest, ExecuteResult, SessionInfo, SessionList, ErrorBody, Health,
    RunRequest, RunAccepted, RunInfo,
]


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
        op["requestBody"] = {"required": body in (ExecuteRequest, RunRequest), **_json(body)}
    return op


def _named(operation_id: str, op: dict[str, Any]) -> dict[str, Any]:
    return {"operationId": operation_id, **op}


def build_openapi() -> dict[str, Any]:
    _, schema = models_json_schema(
        [(m, "validation") for m in _MODELS], ref_template="#/components/schemas/{model}"
    )
    sid = {"name": "session_id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": SESSION_ID_PATTERN}}

    run_id = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
    wait_s = {"name": "wait_s", "in": "query", "required": False,
              "description": "long-poll: answer when the run finishes or after this many "
                             "seconds (at most 60)",
              "schema": {"type": "number", "minimum": 0, "maximum": 60}}

    def with_id(op: dict[str, Any]) -> dict[str, Any]:
        return {**op, "parameters": [sid]}

    return {
        "openapi": "3.1.0",
        "info": {"title": "exec-gateway", "version": __version__},
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
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
                "post": with_id(_execute()),
            },
            "/v1/sessions/{session_id}/runs/{run_id}": {
                "get": _named("get_run", {**_op("A background run's state and result", 200,
                                                RunInfo), "parameters": [sid, run_id, wait_s]}),
                "delete": _named("cancel_run", {
                    **_op("Remove a queued or finished run; interrupt a running one", 204,
                          None), "parameters": [sid, run_id]}),
            },
            "/v1/run": {
                "post": _named("run", _op("One-shot run in a fresh sandbox (with graded tests)",
                                          200, ExecuteResult, RunRequest)),
            },
            "/v1/sessions/{session_id}/interrupt": {
                "post": with_id(_op("Interrupt the running cell", 204, None)),
            },
            "/v1/sessions/{session_id}/restart": {
                "post": with_id(_op("Fresh interpreter, same id", 200, SessionInfo)),
            },
            "/healthz": {"get": {**_op("Liveness and capabilities", 200, Health), "security": []}},
            "/readyz": {"get": _op("Readiness: launcher and registry reachable", 200, Health)},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text exposition"}}}},
        },
    }


def _execute() -> dict[str, Any]:
    op = _op("Run one cell", 200, ExecuteResult, ExecuteRequest)
    op["responses"]["202"] = {"description": "wait: false — queued in the background",
                              **_json(RunAccepted)}
    return op
