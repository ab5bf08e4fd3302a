"""exec-gateway's own WebSocket front door, ``/v1/sessions/{id}/ws``.

A session is created with ``POST /v1/sessions`` (over the bench's HTTP client), then one
WebSocket (tornado's client, ``Authorization: Bearer``, no compression) carries its cells:
``{"type": "execute", "id": ..., "code": ...}`` out, events back (``hello`` first), a call
ending with the ``result`` event of its id (the REST ExecuteResult, sent after the kernel's
idle status). stdout is taken from the ``stream`` events as they arrive, not from the result,
so the stream figures count what was forwarded live. TCP_NODELAY is set on both sides.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketError, websocket_connect

from bench.gateway_rest import GatewayProcess
from bench.http_client import HttpConnection, HttpError, delete_quietly
from bench.target import CALL_TIMEOUT_S, BenchError, ExecOutput

V1 = "gateway_v1_ws"


class V1Session:
    """One gateway session driven over its ``/v1`` WebSocket on ``gw``; one caller at a time.
    With an ``owner`` (another replica sharing ``gw``'s registry) the session is created and
    deleted there, and ``gw`` relays the socket to it frame by frame."""

    def __init__(self, gw: GatewayProcess, session_id: str,
                 owner: GatewayProcess | None = None) -> None:
        self.session_id = session_id
        self._gw = gw
        self._http: HttpConnection = (owner or gw).connection()
        self._ws: WebSocketClientConnection | None = None
        self._calls = 0
        self.notices: list[dict[str, Any]] = []  # dropped / gap / error events seen

    async def open(self) -> None:
        """Create the session, connect, and wait for ``hello``. Raises BenchError."""
        try:
            r = await self._http.request("POST", "/v1/sessions", {"session_id": self.session_id})
        except HttpError as exc:
            raise BenchError(f"create session: {exc}") from exc
        if r.status != 201:
            raise BenchError(f"create session: HTTP {r.status}: {r.body[:300]!r}")
        url = f"ws://127.0.0.1:{self._gw.port}/v1/sessions/{self.session_id}/ws"
        request = HTTPRequest(url, headers={"Authorization": f"Bearer {self._gw.token}"},
                              connect_timeout=30, request_timeout=30)
        try:
            self._ws = await websocket_connect(request, max_message_size=64 * 1024 * 1024)
        except (HTTPClientError, WebSocketError, OSError) as exc:
            raise BenchError(f"/v1 WebSocket: {exc!r}") from exc
        if self._ws.protocol is not None:
            self._ws.protocol.set_nodelay(True)
        hello = await self._read(30.0)
        if hello.get("type") != "hello":
            raise BenchError(f"/v1 WebSocket: first event is not hello: {hello!r:.300}")

    async def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self._ws is not None
        try:
            async with asyncio.timeout(timeout_s):
                frame = await self._ws.read_message()
        except TimeoutError as exc:
            raise BenchError(f"/v1 WebSocket: no event in {timeout_s}s") from exc
        if frame is None:
            raise BenchError(f"/v1 WebSocket closed: {self._ws.close_code} "
                             f"{self._ws.close_reason}")
        event: dict[str, Any] = json.loads(frame)
        return event

    async def execute(self, code: str) -> ExecOutput:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await self._execute(code)
        except TimeoutError as exc:
            raise BenchError(f"/v1 execute: no result in {CALL_TIMEOUT_S}s") from exc

    async def _execute(self, code: str) -> ExecOutput:
        assert self._ws is not None, "open() first"
        self._calls += 1
        rid = f"c{self._calls}"
        await self._ws.write_message(json.dumps({"type": "execute", "id": rid, "code": code}))
        stdout: list[str] = []
        first = last = None
        while True:
            event = await self._read(CALL_TIMEOUT_S)
            kind = event.get("type")
            if kind in ("dropped", "gap"):
                self.notices.append(event)
                continue
            if event.get("id") != rid:
                continue
            if kind == "stream" and event.get("name") == "stdout":
                last = time.perf_counter()
                if first is None:
                    first = last
                stdout.append(event["text"])
            elif kind == "result":
                result = event["result"]
                break
            elif kind == "error" and "code" in event:  # a protocol error, not a traceback
                raise BenchError(f"/v1 execute: {event['code']}: {event.get('message')}")
        if result["status"] != "ok":
            raise BenchError(f"/v1 execute: status {result['status']}: {result.get('error')}")
        outputs = result["outputs"]
        text = outputs[0]["data"].get("text/plain", "") if outputs else ""
        return ExecOutput(text=text, stdout="".join(stdout), first_stdout_at=first,
                          last_stdout_at=last)

    async def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        await delete_quietly(self._http, f"/v1/sessions/{self.session_id}")


class V1WsTarget:
    """Sessions created with ``POST /v1/sessions`` and driven over ``/v1/sessions/{id}/ws`` on
    ``gw`` (created on ``owner`` instead when given: ``gw`` then relays the socket there).
    The server CPU per call is ``gw``'s."""

    def __init__(self, gw: GatewayProcess, name: str = V1,
                 owner: GatewayProcess | None = None) -> None:
        self.gw = gw
        self.owner = owner
        self.name = name
        self.server_pid: int | None = gw.pid

    async def start(self) -> V1Session:
        session = V1Session(self.gw, f"bench-{secrets.token_hex(6)}", self.owner)
        try:
            await session.open()
        except BenchError:
            await session.close()
            raise
        return session
