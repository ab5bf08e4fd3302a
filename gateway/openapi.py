"""OpenAPI: the v1 document, generated from the pydantic wire models and this server's
settings (the limits it enforces on valid-looking input are in the document, so a request
the document calls valid is not refused with a 400)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway import __version__, policy
from gateway.models import (
    SESSION_ID_PATTERN,
    CreateSession,
    ErrorBody,
    ExecuteRequest,
    ExecuteResult,
    FileInfo,
    FileList,
    Health,
    HibernateResult,
    PackageJobAccepted,
    PackageJobInfo,
    PackageList,
    PackagesRequest,
    RunAccepted,
    RunInfo,
    RunRequest,
    SessionInfo,
    SessionList,
)

if TYPE_CHECKING:
    from gateway.settings import Settings

_MODELS: list[type[BaseModel]] = [
    CreateSession, ExecuteRequest, ExecuteResult, SessionInfo, SessionList, ErrorBody, Health,
    FileInfo, FileList, HibernateResult,
    RunRequest, RunAccepted, RunInfo,
    PackagesRequest, PackageJobAccepted, PackageJobInfo, PackageList,
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
        op["requestBody"] = {"required": body in (ExecuteRequest, RunRequest), **_json(body)}
    return op


# a workspace path as split_path accepts it: relative, no empty, '.' or '..' segment, no
# control character; lengths in characters (the server counts UTF-8 bytes)
_PATH_PATTERN = (r"^(?![\s\S]*[\x00-\x1f\x7f])(?!/)(?!(?:.*/)?\.\.?(?:/|$))(?!.*//)"
                 r"(?!.*/$)(?!.*[^/]{{256}})[^\x00-\x1f\x7f]{{{least},1024}}$")


def _files_paths(sid: dict[str, Any]) -> dict[str, Any]:
    """The files API: a session's workspace (the kernel's working directory)."""
    errors = {code: {"description": why, **_json(ErrorBody)} for code, why in _FILE_ERRORS.items()}
    path = {"name": "path", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": _PATH_PATTERN.format(least=1)},
            "description": "relative to the workspace, '/'-separated; at most 1024 bytes of "
                           "UTF-8 and 255 per segment (400 invalid_path beyond)"}
    recursive = {"name": "recursive", "in": "query", "schema": {"type": "boolean",
                                                                "default": False}}
    raw = {"*/*": {"schema": {"type": "string", "format": "binary"}}}  # any type of bytes

    def op(operation_id: str, summary: str, ok: dict[str, Any], params: list[dict[str, Any]],
           **extra: Any) -> dict[str, Any]:
        return {"operationId": operation_id, "summary": summary, "parameters": [sid, *params],
                "responses": {**ok, **errors,
                              "default": {"description": "error", **_json(ErrorBody)}},
                **extra}

    listing = {"200": {"description": "the entries", **_json(FileList)}}
    uploaded = {"201": {"description": "uploaded", **_json(FileList)}}
    multipart = {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "additionalProperties": False, "properties": {
            "file": {"type": "array", "minItems": 1,
                     "items": {"type": "string", "format": "binary"}},
            "path": {"type": "string", "description": "the target directory ('': the "
                     "workspace)", "pattern": _PATH_PATTERN.format(least=0)}}}}}}
    bytes_out = {"200": {"description": "its bytes; Content-Type guessed from the name",
                         "content": raw}}
    put = {"200": {"description": "replaced", **_json(FileInfo)},
           "201": {"description": "created", **_json(FileInfo)}}
    directory = {"name": "path", "in": "query", "description": "a directory ('': the "
                 "workspace)", "schema": {"type": "string", "default": "",
                                          "pattern": _PATH_PATTERN.format(least=0)}}
    return {
        "/v1/sessions/{session_id}/files": {
            "get": op("list_files", "List a workspace directory", listing,
                      [directory, recursive]),
            "post": op("upload_files", "Upload files (multipart: 'file' parts, optional 'path'"
                       " directory); creates the session if needed", uploaded, [],
                       requestBody=multipart),
        },
        "/v1/sessions/{session_id}/files/{path}": {
            "get": op("download_file", "Download a file (streamed)", bytes_out, [path]),
            "put": op("upload_file", "Upload a file (raw body; parents created); creates the "
                      "session if needed", put, [path],
                      requestBody={"required": False, "content": raw,
                                   "description": "the file's bytes (none: an empty file)"}),
            "delete": op("delete_file", "Delete a file, or a directory with recursive=true",
                         {"204": {"description": "deleted"}}, [path, recursive]),
        },
    }


def _named(operation_id: str, op: dict[str, Any]) -> dict[str, Any]:
    return {"operationId": operation_id, **op}


def _packages_paths(sid: dict[str, Any]) -> dict[str, Any]:
    """Packages: pip install into the session's .packages, as a background job."""
    install = _op("Install packages (PEP 508 requirements, at most 50): 202 + a job", 202,
                  PackageJobAccepted, PackagesRequest)
    install["requestBody"]["required"] = True
    install["responses"]["400"] = {"description": "invalid_requirement (naming the entry)",
                                   **_json(ErrorBody)}
    install["responses"]["403"] = {"description": "package_not_allowed (allow/deny lists)",
                                   **_json(ErrorBody)}
    job_id = {"name": "job_id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[0-9a-f]{1,64}$"}}
    return {
        "/v1/sessions/{session_id}/packages": {
            "get": _named("list_packages", {**_op("What this session installed", 200,
                                                  PackageList), "parameters": [sid]}),
            "post": _named("install_packages", {**install, "parameters": [sid]}),
        },
        "/v1/sessions/{session_id}/packages/jobs/{job_id}": {
            "get": _named("get_package_job", {**_op("A package job's status and log", 200,
                                                    PackageJobInfo),
                                              "parameters": [sid, job_id]}),
        },
    }


def _execute() -> dict[str, Any]:
    op = _op("Run one cell", 200, ExecuteResult, ExecuteRequest)
    op["responses"]["202"] = {"description": "wait: false — queued in the background",
                              **_json(RunAccepted)}
    return op


def _with_maximum(prop: dict[str, Any], maximum: float) -> None:
    """Cap the numeric branch of a (possibly nullable) property at ``maximum``."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") in ("integer", "number"):
            branch["maximum"] = min(maximum, branch.get("maximum", maximum))


def _server_limits(schemas: dict[str, Any], settings: Settings) -> None:
    """What SessionManager checks beyond the models, written into the request schemas."""
    asked = copy.deepcopy(schemas["Limits"])  # responses keep Limits: defaults may be higher
    asked["title"] = "RequestedLimits"
    for name, top in settings.max_limits.model_dump().items():
        if top is not None:
            _with_maximum(asked["properties"][name], top)
    schemas["RequestedLimits"] = asked
    create = schemas["CreateSession"]["properties"]
    for request in (create, schemas["RunRequest"]["properties"]):
        for branch in request["limits"]["anyOf"]:
            if "$ref" in branch:
                branch["$ref"] = "#/components/schemas/RequestedLimits"
    env = next(b for b in create["env"]["anyOf"] if b.get("type") == "object")
    env["additionalProperties"] = {"type": "string", "maxLength": 4096,
                                   "pattern": "^[^\\x00-\\x1f]*$"}
    if "PYTHONHASHSEED" in settings.env_allowlist:
        env["properties"] = {"PYTHONHASHSEED": {"type": "string",
                                                "pattern": policy.HASH_SEED_PATTERN}}
    if settings.env_allowlist:
        env["propertyNames"] = {"enum": sorted(settings.env_allowlist)}
    else:
        env["maxProperties"] = 0
    for name in ("ExecuteRequest", "RunRequest"):
        execute = schemas[name]["properties"]
        _with_maximum(execute["timeout_s"], settings.max_timeout_s)
        for branch in execute["stdin"]["anyOf"]:
            if branch.get("type") == "array":
                branch["maxItems"] = settings.max_stdin_lines
        execute["code"]["description"] = (f"at most max_code_bytes ({settings.max_code_bytes})"
                                          f" bytes of UTF-8 (413 beyond)")


def build_openapi(settings: Settings) -> dict[str, Any]:
    _, schema = models_json_schema(
        [(m, "validation") for m in _MODELS], ref_template="#/components/schemas/{model}"
    )
    schemas = schema.get("$defs", {})
    _server_limits(schemas, settings)
    sid = {"name": "session_id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": SESSION_ID_PATTERN}}

    run_id = {"name": "run_id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
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
            "schemas": schemas,
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
            "/v1/sessions/{session_id}/hibernate": {
                "post": with_id(_op("Snapshot the session to the store and stop its kernel; "
                                    "the next call restores it", 202, HibernateResult)),
            },
            **_files_paths(sid),
            **_packages_paths(sid),
            "/healthz": {"get": {**_op("Liveness and capabilities", 200, Health), "security": []}},
            "/readyz": {"get": _op("Readiness: launcher and registry reachable", 200, Health)},
            "/metrics": {"get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "Prometheus text exposition",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "401": {"description": "missing or invalid token", **_json(ErrorBody)},
                },
            }},
        },
    }
