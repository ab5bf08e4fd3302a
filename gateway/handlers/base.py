"""ApiHandler: the base of every JSON endpoint — auth, bounded body, parsing, the one error hook."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.client import responses
from typing import Any, TypeVar

import pydantic
from tornado import httputil, web

from gateway import errors
from gateway.auth import Auth
from gateway.launchers import Launcher
from gateway.metrics import Metrics
from gateway.models import ErrorBody, ErrorDetail
from gateway.registry import Registry
from gateway.replica_link.client import ReplicaLinks
from gateway.replica_link.served import ServedLinks
from gateway.sessions import Here, Session, SessionManager, There
from gateway.settings import Settings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=pydantic.BaseModel)

FORWARDED_HEADER = "X-Exec-Gateway-Forwarded-By"  # on calls one replica forwards to another
RETRY_AFTER_S = 1  # the Retry-After of 429 and 503 answers
# on every JSON answer (the replica link's hot path sends them too)
DEFAULT_HEADERS = (("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                   ("X-Content-Type-Options", "nosniff"))
MAX_MISDIRECTED = 20  # replicas answering "not here" in a row before a call gives up
# gateway_forwarded_calls_total's outcome of a forward that failed, by what it raised
_OUTCOMES: dict[type[BaseException], str] = {errors.OwnerDown: "down",
                                             errors.Misdirected: "misdirected"}


def forward_outcome(failure: BaseException | None) -> str:
    """gateway_forwarded_calls_total's outcome label of a forward that raised ``failure``
    (None: answered)."""
    return "answered" if failure is None else _OUTCOMES.get(type(failure), "unreachable")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "too_many_requests",
    503: "unavailable",
}


@dataclass(frozen=True)
class Services:
    """Everything a handler may use; built once in app.py and passed to every route."""

    settings: Settings
    auth: Auth
    manager: SessionManager
    launcher: Launcher
    registry: Registry
    metrics: Metrics
    replicas: ReplicaLinks  # forwarded REST calls, on links to the other replicas
    links: ServedLinks  # the links other replicas opened to this one


def validation_error(exc: pydantic.ValidationError) -> errors.GatewayError:
    """Translate a pydantic error (never echoing the input back) into a domain error."""
    issues = exc.errors(include_input=False, include_url=False, include_context=False)
    if any(issue["type"] == "json_invalid" for issue in issues):
        return errors.InvalidJSON("request body is not valid JSON", details=[
            {"msg": issue["msg"]} for issue in issues
        ])
    details = [
        {"loc": [str(p) for p in issue["loc"]], "msg": issue["msg"], "type": issue["type"]}
        for issue in issues
    ]
    summary = "; ".join(f"{'.'.join(d['loc']) or 'body'}: {d['msg']}" for d in details[:5])
    return errors.ValidationFailed(f"invalid request: {summary}", details=details)


class GatewayHandler(web.RequestHandler):
    """Auth and the one error hook, shared by JSON endpoints and WebSockets."""

    auth_required = True
    services: Services
    owner: str

    def initialize(self, services: Services) -> None:
        self.services = services
        self.owner = ""

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        for name, value in DEFAULT_HEADERS:
            self.set_header(name, value)

    def authenticate(self) -> None:
        if self.auth_required:
            self.owner = self.services.auth.authenticate(
                self.request.headers.get("Authorization"),
                self.get_query_argument("token", None),
                self.request.headers.get("X-API-Key"),
            )

    async def serve_or_forward(
        self, session_id: str, serve: Callable[[Session], Awaitable[None]],
        relay: Callable[[str], Awaitable[None]] | None = None, *, open_if_absent: bool = False,
    ) -> None:
        """``serve(session)`` if the session is served here, else forward the call to the
        replica that serves it (never twice: a forwarded call is not forwarded again): over
        the replica link (``ApiHandler.forward``), or by ``relay(url)`` (WebSockets, streamed
        files). When that replica is down, the call waits for its lease to expire and is
        served here (the manager takes the session over), all within one deadline the
        manager sets; when it no longer serves the session, the registry is asked again."""
        manager = self.services.manager
        deadline: float | None = None
        misdirected = 0
        # a remembered place may be stale: only the link can tell (it answers Misdirected)
        remembered = relay is None
        if relay is None:
            assert isinstance(self, ApiHandler)
            relay = self.forward
        while True:
            match await manager.locate(self.owner, session_id, open_if_absent=open_if_absent,
                                       deadline=deadline, remembered=remembered):
                case Here(session):
                    try:
                        await serve(session)
                    except errors.SessionHibernated:
                        continue  # hibernated while the call waited: restored when located
                    return
                case There(url, deadline):
                    if self.request.headers.get(FORWARDED_HEADER):
                        moved = "the session moved while the call was forwarded"
                        if getattr(self.request.connection, "via_link", False):
                            raise errors.Misdirected(moved)  # the forwarder asks again
                        raise errors.OwnerUnreachable(moved)
                    try:
                        await relay(url)
                        return
                    except errors.OwnerDown:
                        manager.mark_down(url)  # then ask the registry again
                    except errors.Misdirected:
                        manager.forget_location(self.owner, session_id)
                        misdirected += 1
                        if misdirected > MAX_MISDIRECTED:
                            raise errors.OwnerUnreachable(
                                "the session kept moving between replicas") from None
                        await asyncio.sleep(0.01 * (misdirected - 1))

    def allowed_methods(self) -> list[str]:
        """The methods this handler serves (for a 405's ``Allow``): those it defines."""
        return [m for m in self.SUPPORTED_METHODS
                if getattr(type(self), m.lower(), None) is not getattr(web.RequestHandler,
                                                                       m.lower(), None)]

    def origin_allowed(self, origin: str) -> bool:
        return origin in self.services.settings.allowed_origins

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, errors.GatewayError):
            status, code, message, details = exc.status, exc.code, exc.message, exc.details
        elif isinstance(exc, web.HTTPError):
            status = exc.status_code
            code = _CODES.get(status, "http_error")
            message = exc.log_message or responses.get(status, "error")
            if "%" in message and exc.args:
                message = responses.get(status, "error")
            details = None
        else:
            status, code, message, details = 500, "internal_error", "internal error", None
        if status == 405:
            message = f"method {self.request.method} is not allowed here"
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        if not getattr(self, "_prepared", True):
            # refused before the body was read: tornado drops the connection after this
            # answer, so say so (keep-alive clients would otherwise reuse a dead socket)
            self.set_header("Connection", "close")
        if status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="exec-gateway"')
        if status in (429, 503):  # busy or unavailable for now: when to try again
            self.set_header("Retry-After", str(RETRY_AFTER_S))
        body = ErrorBody(error=ErrorDetail(code=code, message=message, details=details))
        self.finish(body.model_dump_json(exclude_none=True))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, (errors.GatewayError, web.HTTPError)):
            log.info("%s %s -> %s", self.request.method, self.request.path,
                     getattr(value, "code", getattr(value, "status_code", "")))
        else:
            super().log_exception(typ, value, tb)


@web.stream_request_body
class ApiHandler(GatewayHandler):
    """A JSON endpoint: bounded request body, parsing, CORS for allowed origins."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for verb in _VERBS:  # every endpoint answers a refused body before doing anything
            method = cls.__dict__.get(verb)
            if method is not None:
                setattr(cls, verb, _refusal_first(method))

    def initialize(self, services: Services) -> None:
        super().initialize(services)
        self._chunks: list[bytes] = []
        self._received = 0
        self._prepared = False  # until prepare() passes, an error answer ends the connection
        self._refusal: errors.GatewayError | None = None  # answered once the body is read
        self._cors()

    def set_default_headers(self) -> None:
        super().set_default_headers()
        if hasattr(self, "services"):  # also after send_error's clear(), so errors carry CORS
            self._cors()

    def _cors(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and self.origin_allowed(origin):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Headers",
                            "Authorization, X-API-Key, Content-Type")
            self.set_header("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
            self.set_header("Access-Control-Max-Age", "600")
            self.add_header("Vary", "Origin")

    async def options(self, *args: str, **kwargs: str) -> None:
        """CORS preflight: headers come from set_default_headers."""
        self.set_status(204)
        self.finish()

    async def prepare(self) -> None:
        if self.request.method != "OPTIONS":
            self.authenticate()
        limit = self.services.settings.max_request_bytes
        ceiling = 4 * limit  # bodies up to this are read (past the limit, discarded)
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            too_large = errors.PayloadTooLarge(f"request body is larger than {limit} bytes")
            if int(length) > ceiling:
                raise too_large  # answered now, and the connection closed
            # Answered once the body is in: closing on a client still sending makes its
            # kernel see a reset (RST) before it reads the 413 (lingering close, bounded).
            self._refusal = too_large
        if self.request.connection is not None:
            # beyond the ceiling tornado itself cuts the connection; up to it we answer in JSON
            self.request.connection.set_max_body_size(ceiling)  # type: ignore[attr-defined]
        self._prepared = True

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._refusal is None and self._received <= self.services.settings.max_request_bytes:
            self._chunks.append(chunk)

    def body(self, model: type[M], *, empty_ok: bool = False) -> M:
        """The body parsed as ``model``. Raises PayloadTooLarge, InvalidJSON, ValidationFailed."""
        limit = self.services.settings.max_request_bytes
        if self._received > limit:
            raise errors.PayloadTooLarge(f"request body is larger than {limit} bytes")
        raw = b"".join(self._chunks)
        if empty_ok and not raw.strip():
            raw = b"{}"
        try:
            return model.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            raise validation_error(exc) from None

    async def forward(self, base_url: str) -> None:
        """Replay this request on the replica at ``base_url`` (over the replica link) and
        relay its answer. Raises OwnerDown or Misdirected when it did not take the call,
        OwnerUnreachable when it may have run it."""
        settings = self.services.settings
        headers = forwarded_headers(settings, self.request.headers)
        body = b"".join(self._chunks) if self.request.method == "POST" else b""
        forwarded = self.services.metrics.forwarded
        try:
            answer = await self.services.replicas.fetch(
                base_url, self.request.method or "GET", self.request.uri or "/", headers, body,
                forward_timeout_s(settings))
        except errors.OwnerUnreachable as exc:
            forwarded.labels(forward_outcome(exc)).inc()
            raise
        forwarded.labels(forward_outcome(None)).inc()
        self.set_status(answer.code)
        for name, value in answer.headers:
            self.set_header(name, value)
        if answer.code == 204:
            self.clear_header("Content-Type")
            self.finish()
        else:
            self.finish(answer.body)

    def send(self, model: pydantic.BaseModel, status: int = 200) -> None:
        self.set_status(status)
        self.finish(model.model_dump_json())

    def no_content(self) -> None:
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()

Method = Callable[..., Awaitable[None]]
SessionMethod = Callable[..., Awaitable[None]]  # (handler, session, **other path args)

_VERBS = ("get", "post", "put", "patch", "delete")


def _refusal_first(method: Method) -> Method:
    """Raise the refusal ``prepare`` deferred until the body was read, instead of ``method``."""

    @functools.wraps(method)
    async def wrapper(self: ApiHandler, *args: Any, **kwargs: Any) -> None:
        if self._refusal is not None:
            raise self._refusal
        await method(self, *args, **kwargs)

    return wrapper


def forwarded_headers(settings: Settings, request: httputil.HTTPHeaders) -> dict[str, str]:
    """The headers of a call forwarded over the replica link: the client's key (the owner
    authenticates it again) and who forwarded it (never forwarded twice)."""
    headers = {FORWARDED_HEADER: settings.instance_id, "Content-Type": "application/json"}
    for name in ("Authorization", "X-API-Key"):
        if name in request:
            headers[name] = request[name]
    return headers


def forward_timeout_s(settings: Settings) -> float:
    """How long a forwarded call may take: it may wait behind a full queue of the longest
    calls at the owner, each with its timeout ladder and a kernel restart. Giving up sooner
    would answer 503 for a call the owner still runs."""
    per_call = (settings.max_timeout_s + 2 * settings.interrupt_grace_s
                + settings.shutdown_grace_s + settings.kernel_start_timeout_s)
    return (settings.max_queue_per_session + 1) * per_call + settings.kernel_start_timeout_s


def forwardable(method: SessionMethod) -> Method:
    """Serve a session here (the method gets the Session), or forward the call to the replica
    that serves it (see ``GatewayHandler.serve_or_forward``)."""

    @functools.wraps(method)
    async def wrapper(self: ApiHandler, session_id: str, **kwargs: Any) -> None:
        await self.serve_or_forward(session_id, lambda s: method(self, s, **kwargs))

    return wrapper


def forwardable_kernel(method: SessionMethod) -> Method:
    """``forwardable`` for Jupyter routes, which name a session by its kernel id."""

    @functools.wraps(method)
    async def wrapper(self: ApiHandler, kernel_id: str, **kwargs: Any) -> None:
        session_id = await self.services.manager.session_of_kernel(self.owner, kernel_id)
        await self.serve_or_forward(session_id, lambda s: method(self, s, **kwargs))

    return wrapper


class NotFoundHandler(ApiHandler):
    """Every unknown path: a JSON 404 (no auth needed to learn a path does not exist)."""

    auth_required = False

    async def prepare(self) -> None:
        raise errors.NotFound(f"no such endpoint: {self.request.path}")
