"""The blocking client: ``Gateway`` (one connection pool, retries) and its ``Session`` objects.

``Session.run`` without callbacks is one REST call; with ``on_stdout``/``on_stderr``/
``on_output``/a callable ``on_input`` it streams over the session WebSocket (see
``stream.CellStream``). ``async_gateway`` is the same API for asyncio.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.parse
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from exec_gateway_client import errors
from exec_gateway_client._base import WS_MAX_MESSAGE_BYTES, Config, check, quote, transport_error
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
InputSource = Callable[[str], str] | Sequence[str]


class Gateway:
    """A client of one exec-gateway. ``url``/``token`` default to ``EXEC_GATEWAY_URL`` and
    ``EXEC_GATEWAY_TOKEN``. Every call has a timeout (``timeout_s``; cells: their own timeout
    plus ``run_margin_s``); 429 and 503 answers are retried (``retries``) honouring
    ``Retry-After``. ``transport`` is passed to httpx (tests, custom networking)."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout_s: float = 30.0, retries: int = 4, run_margin_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.config = Config.make(url, token, timeout_s=timeout_s, retries=retries,
                                  run_margin_s=run_margin_s)
        self._http = httpx.Client(base_url=self.config.url, headers=self.config.headers,
                                  timeout=self.config.timeout(), transport=transport)

    # ---------------------------------------------------------------- plumbing
    def request(self, method: str, path: str, *, read_timeout_s: float | None = None,
                replay_safe: bool = True, **kw: Any) -> httpx.Response:
        """One API call with retries; the answer if it succeeded. Raises APIError subclasses,
        TransportError (RequestTimeout when no answer came in time)."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, timeout=self.config.timeout(
                    read_timeout_s), **kw)
                return check(response)
            except (errors.APIError, httpx.HTTPError) as exc:
                delay = self.config.retry_delay(attempt, exc, replay_safe=replay_safe)
                if delay is None:
                    if isinstance(exc, httpx.HTTPError):
                        raise transport_error(exc, method, path) from exc
                    raise
            time.sleep(delay)
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- API
    def session(self, session_id: str | None = None, *, keep: bool = False,
                limits: dict[str, Any] | None = None,
                env: dict[str, str] | None = None) -> Session:
        """A session handle; the session is created on first use (or reused if it exists) and,
        used as a context manager, deleted on exit unless ``keep``. ``session_id=None`` lets
        the server pick one."""
        create = CreateSession(session_id=session_id, env=env,
                               limits=LimitsRequest(**limits) if limits else None)
        return Session(self, create, keep=keep)

    def sessions(self) -> list[SessionInfo]:
        """This token's sessions."""
        return SessionList.model_validate_json(self.request("GET", "/v1/sessions").content
                                               ).sessions

    def health(self) -> Health:
        return Health.model_validate_json(self.request("GET", "/healthz").content)

    def openapi(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/openapi.json").json())

    def run(self, code: str, *, stdin: str | Sequence[str] | None = None,
            timeout_s: float | None = None, **options: Any) -> Result:
        """A one-shot run in a fresh sandbox (``POST /v1/run``; needs a server with one-shot
        runs, issue 15). ``options``: limits, entrypoint, tests, files, as the server takes."""
        body = {"code": code, "stdin": stdin if isinstance(stdin, str) or stdin is None
                else list(stdin), "timeout_s": timeout_s, **options}
        response = self.request("POST", "/v1/run", json=_without_none(body), replay_safe=True,
                                read_timeout_s=self.config.run_deadline_s(timeout_s))
        return Result.model_validate_json(response.content)


class Session:
    """One session of a ``Gateway``. Use as a context manager, or call ``delete()``."""

    def __init__(self, gw: Gateway, create: CreateSession, *, keep: bool) -> None:
        self.gw = gw
        self.keep = keep
        self._create = create
        self._id = create.session_id
        self._ready = False

    @property
    def id(self) -> str:
        """The session id (creates the session first when the server is to pick it)."""
        if self._id is None:
            self.ensure()
        assert self._id is not None
        return self._id

    @property
    def _path(self) -> str:
        return f"/v1/sessions/{quote(self.id)}"

    def ensure(self) -> None:
        """Create the session unless it exists (done by the first call that needs it)."""
        if self._ready:
            return
        try:
            response = self.gw.request("POST", "/v1/sessions",
                                       json=self._create.model_dump(exclude_none=True))
            self._id = SessionInfo.model_validate_json(response.content).id
        except errors.SessionExists:
            pass
        self._ready = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.keep and self._ready:
            with contextlib.suppress(errors.GatewayError):
                self.delete()

    # ---------------------------------------------------------------- cells
    def run(self, code: str, *, timeout_s: float | None = None,
            on_stdout: TextCallback | None = None, on_stderr: TextCallback | None = None,
            on_output: Callable[[Output], Any] | None = None,
            on_input: InputSource | None = None) -> Result:
        """Run one cell and return its ``Result`` (a failed cell is a result, not an error:
        see ``Result.raise_for_status``). With callbacks the output streams as the kernel
        produces it; ``on_input`` answers ``input()`` (a callable given the prompt, or a list
        of lines; without it ``input()`` raises). Ctrl-C interrupts the cell and re-raises."""
        self.ensure()
        stdin = _lines(on_input) if on_input is not None and not callable(on_input) else None
        try:
            if on_stdout or on_stderr or on_output or callable(on_input):
                request = ExecuteRequest(code=code, timeout_s=timeout_s,
                                         stdin=stdin if stdin is not None or callable(on_input)
                                         else [])
                return self._stream(request, on_stdout, on_stderr, on_output,
                                    on_input if callable(on_input) else None)
            request = ExecuteRequest(code=code, timeout_s=timeout_s, stdin=stdin)
            response = self.gw.request(
                "POST", f"{self._path}/execute", json=request.model_dump(exclude_none=True),
                replay_safe=False, read_timeout_s=self.gw.config.run_deadline_s(timeout_s))
            return Result.model_validate_json(response.content)
        except KeyboardInterrupt:
            with contextlib.suppress(errors.GatewayError):
                self.interrupt()
            raise

    def _stream(self, request: ExecuteRequest, on_stdout: TextCallback | None,
                on_stderr: TextCallback | None, on_output: Callable[[Output], Any] | None,
                on_input: Callable[[str], str] | None) -> Result:
        config = self.gw.config
        run = CellStream(request)
        deadline = time.monotonic() + config.run_deadline_s(request.timeout_s)
        failures = refused = 0
        while run.result is None:
            seen = run.last_seq
            try:
                with self._connect(run.since) as ws:
                    self._pump(ws, run, deadline, on_stdout, on_stderr, on_output, on_input)
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
                time.sleep(config.backoff(failures - 1))
            except errors.APIError as exc:  # refused before it ran (e.g. queue_full)
                delay = None if run.started else config.retry_delay(refused, exc,
                                                                     replay_safe=False)
                if delay is None:
                    raise
                refused += 1
                run.sent = False
                time.sleep(delay)
        return run.result

    def _connect(self, since: int | None) -> ClientConnection:
        url, config = self.gw.config.ws_url(self.id, since), self.gw.config
        attempt = 0
        while True:
            try:
                return connect(url, additional_headers=config.headers, compression=None,
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
            time.sleep(delay)
            attempt += 1

    @staticmethod
    def _pump(ws: ClientConnection, run: CellStream, deadline: float,
              on_stdout: TextCallback | None, on_stderr: TextCallback | None,
              on_output: Callable[[Output], Any] | None,
              on_input: Callable[[str], str] | None) -> None:
        """Read events until the run's result (raises when the socket fails first)."""

        def recv() -> dict[str, Any]:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                return dict(json.loads(ws.recv(timeout=left)))
            except TimeoutError:
                raise errors.RequestTimeout("no result for the cell in time; it may still "
                                            "be running") from None

        run.accept(recv())  # hello
        if not run.sent:
            ws.send(run.execute_frame())
            run.sent = True
        while run.result is None:
            event = run.accept(recv())
            if event is None:
                continue
            if event["type"] == "input_request":
                answer = on_input(str(event.get("prompt", ""))) if on_input else ""
                ws.send(run.input_frame(answer))
            elif (target := callback_for(event, on_stdout, on_stderr, on_output)) is not None:
                target[0](target[1])

    # ---------------------------------------------------------------- session calls
    def info(self) -> SessionInfo:
        self.ensure()
        return SessionInfo.model_validate_json(self.gw.request("GET", self._path).content)

    def interrupt(self) -> None:
        """Interrupt the cell running in the session now (whoever started it)."""
        self.gw.request("POST", f"{self._path}/interrupt")

    def restart(self) -> SessionInfo:
        """A fresh interpreter, same id: variables are gone, ``generation`` goes up."""
        self.ensure()
        response = self.gw.request("POST", f"{self._path}/restart",
                                   read_timeout_s=self.gw.config.run_deadline_s(None))
        return SessionInfo.model_validate_json(response.content)

    def hibernate(self) -> HibernateResult:
        """Snapshot the session to the server's store and stop its kernel (after a running
        cell); the next call restores it (``Result.restored`` says what came back)."""
        response = self.gw.request("POST", f"{self._path}/hibernate",
                                   read_timeout_s=self.gw.config.run_deadline_s(None))
        return HibernateResult.model_validate_json(response.content)

    def delete(self) -> None:
        """Stop the kernel and remove the session (an unknown session is not an error)."""
        with contextlib.suppress(errors.SessionNotFound):
            self.gw.request("DELETE", self._path)
        self._ready = False

    @property
    def files(self) -> Files:
        return Files(self)

    @property
    def packages(self) -> Packages:
        return Packages(self)


class Files:
    """The session's workspace files. Needs a server with the files API (issue 13)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _url(self, path: str) -> str:
        self.session.ensure()
        return f"{self.session._path}/files/{urllib.parse.quote(path.lstrip('/'))}"

    def upload(self, path: str, data: bytes) -> FileInfo:
        response = self.session.gw.request("PUT", self._url(path), content=data)
        return FileInfo.model_validate_json(response.content)

    def download(self, path: str) -> bytes:
        return self.session.gw.request("GET", self._url(path)).content

    def list(self, path: str = "", *, recursive: bool = False) -> list[FileInfo]:
        self.session.ensure()
        response = self.session.gw.request(
            "GET", f"{self.session._path}/files",
            params={"path": path, "recursive": str(recursive).lower()})
        return [FileInfo.model_validate(f) for f in response.json()["files"]]

    def delete(self, path: str, *, recursive: bool = False) -> None:
        self.session.gw.request("DELETE", self._url(path),
                                params={"recursive": "true"} if recursive else None)


class Packages:
    """Packages installed into the session. Needs a server with the packages API (issue 14)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def install(self, requirements: Sequence[str], *, wait: bool = True,
                timeout_s: float = 600.0, poll_s: float = 0.5) -> PackageJob:
        """Start an install job; with ``wait``, poll it until it succeeded or failed."""
        self.session.ensure()
        gw = self.session.gw
        response = gw.request("POST", f"{self.session._path}/packages",
                              json={"packages": list(requirements)})
        job = PackageJob.model_validate_json(response.content)
        deadline = time.monotonic() + timeout_s
        while wait and job.status in ("queued", "running"):
            if time.monotonic() > deadline:
                raise errors.RequestTimeout(f"package job {job.job_id} still {job.status}")
            time.sleep(poll_s)
            url = job.status_url or f"{self.session._path}/packages/jobs/{job.job_id}"
            job = PackageJob.model_validate_json(gw.request("GET", url).content)
        return job

    def list(self) -> list[dict[str, Any]]:
        self.session.ensure()
        response = self.session.gw.request("GET", f"{self.session._path}/packages")
        return list(response.json()["packages"])


def _lines(answers: Sequence[str]) -> list[str]:
    """``on_input`` given as data: a list of lines, or one string of lines."""
    return answers.splitlines() if isinstance(answers, str) else list(answers)


def _without_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _as_retryable(error: Exception) -> Exception:
    """A failed WebSocket handshake as the error the retry policy judges (connection errors
    before the upgrade never reached a kernel: like httpx's ConnectError)."""
    if isinstance(error, errors.APIError):
        return error
    return httpx.ConnectError(str(error))

