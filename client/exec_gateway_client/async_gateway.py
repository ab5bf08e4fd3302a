"""The asyncio client: ``AsyncGateway`` and ``AsyncSession``, the same API as ``gateway`` with
``await``. Callbacks may be plain functions or coroutine functions. Cancelling a running
``run()`` (Ctrl-C under ``asyncio.run`` does) interrupts the cell."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from exec_gateway_client import errors
from exec_gateway_client._base import WS_MAX_MESSAGE_BYTES, Config, check, quote, transport_error
from exec_gateway_client.gateway import _as_retryable, _lines, _without_none
from exec_gateway_client.models import (
    CreateSession,
    ExecuteRequest,
    FileInfo,
    Health,
    HibernateResult,
    LimitsRequest,
    Output,
    PackageJob,
    Result,
    SessionInfo,
    SessionList,
)
from exec_gateway_client.stream import CellStream, Resync, callback_for, closed_error

TextCallback = Callable[[str], Any]
InputSource = Callable[[str], str | Awaitable[str]] | Sequence[str]


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    value = fn(*args)
    return await value if inspect.isawaitable(value) else value


class AsyncGateway:
    """The asyncio twin of ``Gateway`` (same arguments; ``transport`` is an httpx
    ``AsyncBaseTransport``). Use ``async with`` or ``await gw.aclose()``."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout_s: float = 30.0, retries: int = 4, run_margin_s: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = Config.make(url, token, timeout_s=timeout_s, retries=retries,
                                  run_margin_s=run_margin_s)
        self._http = httpx.AsyncClient(base_url=self.config.url, headers=self.config.headers,
                                       timeout=self.config.timeout(), transport=transport)

    async def request(self, method: str, path: str, *, read_timeout_s: float | None = None,
                      replay_safe: bool = True, **kw: Any) -> httpx.Response:
        """One API call with retries (see ``Gateway.request``)."""
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, timeout=self.config.timeout(
                    read_timeout_s), **kw)
                return check(response)
            except (errors.APIError, httpx.HTTPError) as exc:
                delay = self.config.retry_delay(attempt, exc, replay_safe=replay_safe)
                if delay is None:
                    if isinstance(exc, httpx.HTTPError):
                        raise transport_error(exc, method, path) from exc
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncGateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def session(self, session_id: str | None = None, *, keep: bool = False,
                limits: dict[str, Any] | None = None,
                env: dict[str, str] | None = None) -> AsyncSession:
        """See ``Gateway.session``; use with ``async with``."""
        create = CreateSession(session_id=session_id, env=env,
                               limits=LimitsRequest(**limits) if limits else None)
        return AsyncSession(self, create, keep=keep)

    async def sessions(self) -> list[SessionInfo]:
        response = await self.request("GET", "/v1/sessions")
        return SessionList.model_validate_json(response.content).sessions

    async def health(self) -> Health:
        return Health.model_validate_json((await self.request("GET", "/healthz")).content)

    async def openapi(self) -> dict[str, Any]:
        return dict((await self.request("GET", "/v1/openapi.json")).json())

    async def run(self, code: str, *, stdin: str | Sequence[str] | None = None,
                  timeout_s: float | None = None, **options: Any) -> Result:
        """One-shot run (``POST /v1/run``; needs a server with one-shot runs, issue 15)."""
        body = {"code": code, "stdin": stdin if isinstance(stdin, str) or stdin is None
                else list(stdin), "timeout_s": timeout_s, **options}
        response = await self.request("POST", "/v1/run", json=_without_none(body),
                                       read_timeout_s=self.config.run_deadline_s(timeout_s))
        return Result.model_validate_json(response.content)


class AsyncSession:
    """One session of an ``AsyncGateway`` (see ``Session``)."""

    def __init__(self, gw: AsyncGateway, create: CreateSession, *, keep: bool) -> None:
        self.gw = gw
        self.keep = keep
        self._create = create
        self._id = create.session_id
        self._ready = False

    @property
    def id(self) -> str:
        """The session id (known once the session exists when the server picks it)."""
        if self._id is None:
            raise RuntimeError("the server has not named this session yet: await ensure()")
        return self._id

    @property
    def _path(self) -> str:
        return f"/v1/sessions/{quote(self.id)}"

    async def ensure(self) -> None:
        """Create the session unless it exists (done by the first call that needs it)."""
        if self._ready:
            return
        try:
            response = await self.gw.request("POST", "/v1/sessions",
                                             json=self._create.model_dump(exclude_none=True))
            self._id = SessionInfo.model_validate_json(response.content).id
        except errors.SessionExists:
            pass
        self._ready = True

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if not self.keep and self._ready:
            with contextlib.suppress(errors.GatewayError):
                await self.delete()

    async def run(self, code: str, *, timeout_s: float | None = None,
                  on_stdout: TextCallback | None = None, on_stderr: TextCallback | None = None,
                  on_output: Callable[[Output], Any] | None = None,
                  on_input: InputSource | None = None) -> Result:
        """See ``Session.run``. Cancelled, it interrupts the cell and re-raises."""
        await self.ensure()
        stdin = _lines(on_input) if on_input is not None and not callable(on_input) else None
        try:
            if on_stdout or on_stderr or on_output or callable(on_input):
                request = ExecuteRequest(code=code, timeout_s=timeout_s,
                                         stdin=stdin if stdin is not None or callable(on_input)
                                         else [])
                return await self._stream(request, on_stdout, on_stderr, on_output,
                                          on_input if callable(on_input) else None)
            request = ExecuteRequest(code=code, timeout_s=timeout_s, stdin=stdin)
            response = await self.gw.request(
                "POST", f"{self._path}/execute", json=request.model_dump(exclude_none=True),
                replay_safe=False, read_timeout_s=self.gw.config.run_deadline_s(timeout_s))
            return Result.model_validate_json(response.content)
        except (asyncio.CancelledError, KeyboardInterrupt):
            with contextlib.suppress(errors.GatewayError):
                await asyncio.shield(self.interrupt())
            raise

    async def _stream(self, request: ExecuteRequest, on_stdout: TextCallback | None,
                      on_stderr: TextCallback | None, on_output: Callable[[Output], Any] | None,
                      on_input: Callable[[str], Any] | None) -> Result:
        config = self.gw.config
        run = CellStream(request)
        deadline = time.monotonic() + config.run_deadline_s(request.timeout_s)
        failures = refused = 0
        while run.result is None:
            seen = run.last_seq
            try:
                ws = await self._connect(run.since)
                async with ws:
                    await self._pump(ws, run, deadline, on_stdout, on_stderr, on_output,
                                     on_input)
            except (ConnectionClosed, Resync, OSError) as exc:
                if isinstance(exc, ConnectionClosed):
                    code = exc.rcvd.code if exc.rcvd is not None else None
                    gone = closed_error(code, exc.rcvd.reason if exc.rcvd else "")
                    if gone is not None:
                        raise gone from exc
                failures = 1 if run.last_seq != seen else failures + 1  # in a row, no progress
                if failures > config.reconnects:
                    raise errors.ConnectionLost(
                        f"the session WebSocket dropped {failures} times: {exc!r}") from exc
                await asyncio.sleep(config.backoff(failures - 1))
            except errors.APIError as exc:
                delay = None if run.started else config.retry_delay(refused, exc,
                                                                     replay_safe=False)
                if delay is None:
                    raise
                refused += 1
                run.sent = False
                await asyncio.sleep(delay)
        return run.result

    async def _connect(self, since: int | None) -> ClientConnection:
        url, config = self.gw.config.ws_url(self.id, since), self.gw.config
        attempt = 0
        while True:
            try:
                return await connect(url, additional_headers=config.headers, compression=None,
                                     max_size=WS_MAX_MESSAGE_BYTES, open_timeout=config.timeout_s)
            except InvalidStatus as exc:
                response = exc.response
                body = bytes(response.body or b"")
                error: Exception = errors.from_answer(response.status_code, body,
                                                      response.headers)
            except (OSError, WebSocketException, TimeoutError) as exc:
                error = exc
            delay = config.retry_delay(attempt, _as_retryable(error), replay_safe=True)
            if delay is None:
                if isinstance(error, errors.APIError):
                    raise error
                raise errors.TransportError(f"WebSocket {url}: {error!r}") from error
            await asyncio.sleep(delay)
            attempt += 1

    @staticmethod
    async def _pump(ws: ClientConnection, run: CellStream, deadline: float,
                    on_stdout: TextCallback | None, on_stderr: TextCallback | None,
                    on_output: Callable[[Output], Any] | None,
                    on_input: Callable[[str], Any] | None) -> None:
        async def recv() -> dict[str, Any]:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                return dict(json.loads(await asyncio.wait_for(ws.recv(), left)))
            except TimeoutError:
                raise errors.RequestTimeout("no result for the cell in time; it may still "
                                            "be running") from None

        run.accept(await recv())  # hello
        if not run.sent:
            await ws.send(run.execute_frame())
            run.sent = True
        while run.result is None:
            event = run.accept(await recv())
            if event is None:
                continue
            if event["type"] == "input_request":
                answer = await _call(on_input, str(event.get("prompt", ""))) if on_input else ""
                await ws.send(run.input_frame(str(answer)))
            elif (target := callback_for(event, on_stdout, on_stderr, on_output)) is not None:
                await _call(target[0], target[1])

    async def info(self) -> SessionInfo:
        await self.ensure()
        return SessionInfo.model_validate_json((await self.gw.request("GET", self._path)).content)

    async def interrupt(self) -> None:
        await self.gw.request("POST", f"{self._path}/interrupt")

    async def restart(self) -> SessionInfo:
        await self.ensure()
        response = await self.gw.request("POST", f"{self._path}/restart",
                                         read_timeout_s=self.gw.config.run_deadline_s(None))
        return SessionInfo.model_validate_json(response.content)

    async def hibernate(self) -> HibernateResult:
        """Snapshot the session to the server's store and stop its kernel (after a running
        cell); the next call restores it (``Result.restored`` says what came back)."""
        response = await self.gw.request("POST", f"{self._path}/hibernate",
                                         read_timeout_s=self.gw.config.run_deadline_s(None))
        return HibernateResult.model_validate_json(response.content)

    async def delete(self) -> None:
        with contextlib.suppress(errors.SessionNotFound):
            await self.gw.request("DELETE", self._path)
        self._ready = False

    @property
    def files(self) -> AsyncFiles:
        return AsyncFiles(self)

    @property
    def packages(self) -> AsyncPackages:
        return AsyncPackages(self)


class AsyncFiles:
    """See ``gateway.Files`` (needs the server's files API, issue 13)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _url(self, path: str) -> str:
        await self.session.ensure()
        return f"{self.session._path}/files/{urllib.parse.quote(path.lstrip('/'))}"

    async def upload(self, path: str, data: bytes) -> FileInfo:
        response = await self.session.gw.request("PUT", await self._url(path), content=data)
        return FileInfo.model_validate_json(response.content)

    async def download(self, path: str) -> bytes:
        return (await self.session.gw.request("GET", await self._url(path))).content

    async def list(self, path: str = "", *, recursive: bool = False) -> list[FileInfo]:
        await self.session.ensure()
        response = await self.session.gw.request(
            "GET", f"{self.session._path}/files",
            params={"path": path, "recursive": str(recursive).lower()})
        return [FileInfo.model_validate(f) for f in response.json()["files"]]

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        await self.session.gw.request("DELETE", await self._url(path),
                                      params={"recursive": "true"} if recursive else None)


class AsyncPackages:
    """See ``gateway.Packages`` (needs the server's packages API, issue 14)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def install(self, requirements: Sequence[str], *, wait: bool = True,
                      timeout_s: float = 600.0, poll_s: float = 0.5) -> PackageJob:
        await self.session.ensure()
        gw = self.session.gw
        response = await gw.request("POST", f"{self.session._path}/packages",
                                    json={"packages": list(requirements)})
        job = PackageJob.model_validate_json(response.content)
        deadline = time.monotonic() + timeout_s
        while wait and job.status in ("queued", "running"):
            if time.monotonic() > deadline:
                raise errors.RequestTimeout(f"package job {job.job_id} still {job.status}")
            await asyncio.sleep(poll_s)
            url = job.status_url or f"{self.session._path}/packages/jobs/{job.job_id}"
            job = PackageJob.model_validate_json((await gw.request("GET", url)).content)
        return job

    async def list(self) -> list[dict[str, Any]]:
        await self.session.ensure()
        response = await self.session.gw.request("GET", f"{self.session._path}/packages")
        return list(response.json()["packages"])
