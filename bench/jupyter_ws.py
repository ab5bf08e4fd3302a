"""A Jupyter kernels-API client: ``POST /api/kernels``, then cells over the channels WebSocket.

The same code path talks to stock jupyter-kernel-gateway and to exec-gateway's Jupyter API:
Jupyter message JSON in legacy text frames with a ``channel`` field (no subprotocol offered,
as jupyter_server's GatewayClient does), ``Authorization: token <t>``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketError, websocket_connect

from bench.http_client import HttpConnection, HttpError, delete_quietly
from bench.target import CALL_TIMEOUT_S, BenchError, ExecOutput

PROTOCOL_VERSION = "5.3"


def _message(msg_type: str, content: dict[str, Any], session: str, channel: str) -> dict[str, Any]:
    header = {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": "bench",
        "session": session,
        "date": datetime.now(UTC).isoformat(),
        "version": PROTOCOL_VERSION,
    }
    return {"header": header, "parent_header": {}, "metadata": {}, "content": content,
            "channel": channel, "buffers": []}


class JupyterKernel:
    """One kernel: created over REST, driven over its channels WebSocket; one caller at a time."""

    def __init__(self, http: HttpConnection, token: str, kernel_id: str) -> None:
        self.kernel_id = kernel_id
        self._http = http
        self._token = token
        self._session = uuid.uuid4().hex
        self._ws: WebSocketClientConnection | None = None

    async def connect(self) -> None:
        """Open the channels WebSocket. Raises BenchError."""
        url = (f"ws://{self._http.host}:{self._http.port}/api/kernels/{self.kernel_id}/channels"
               f"?session_id={self._session}")
        request = HTTPRequest(url, headers={"Authorization": f"token {self._token}"},
                              connect_timeout=30, request_timeout=30)
        try:
            self._ws = await websocket_connect(request, max_message_size=64 * 1024 * 1024)
        except (HTTPClientError, WebSocketError, OSError) as exc:
            raise BenchError(f"channels WebSocket: {exc!r}") from exc
        if self._ws.protocol is not None:
            self._ws.protocol.set_nodelay(True)  # our side never holds small frames back

    async def execute(self, code: str) -> ExecOutput:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await self._execute(code)
        except TimeoutError as exc:
            raise BenchError(f"channels execute: no answer in {CALL_TIMEOUT_S}s") from exc

    async def _execute(self, code: str) -> ExecOutput:
        if self._ws is None:
            await self.connect()
        ws = self._ws
        assert ws is not None
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        request = _message("execute_request", content, self._session, "shell")
        msg_id = request["header"]["msg_id"]
        await ws.write_message(json.dumps(request))
        text, stdout, idle, reply = "", [], False, None
        first = last = None
        while not (idle and reply is not None):
            frame = await ws.read_message()
            if frame is None:
                raise BenchError(f"channels WebSocket closed: {ws.close_code} {ws.close_reason}")
            msg = json.loads(frame)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, body = msg["msg_type"], msg["content"]
            if msg["channel"] == "shell" and kind == "execute_reply":
                reply = body
            elif kind == "execute_result":
                text = body["data"].get("text/plain", "")
            elif kind == "stream" and body.get("name") == "stdout":
                last = time.perf_counter()
                if first is None:
                    first = last
                stdout.append(body["text"])
            elif kind == "status" and body["execution_state"] == "idle":
                idle = True
        if reply["status"] != "ok":
            raise BenchError(f"channels execute: execute_reply status {reply['status']}")
        return ExecOutput(text=text, stdout="".join(stdout), first_stdout_at=first,
                          last_stdout_at=last)

    async def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        await delete_quietly(self._http, f"/api/kernels/{self.kernel_id}")


class JupyterTarget:
    """Any server with the Jupyter kernels API on 127.0.0.1."""

    def __init__(self, name: str, port: int, token: str, server_pid: int | None) -> None:
        self.name = name
        self.port = port
        self.token = token
        self.server_pid = server_pid

    def _http(self) -> HttpConnection:
        return HttpConnection("127.0.0.1", self.port, {"Authorization": f"token {self.token}"})

    async def available(self) -> tuple[bool, str]:
        """(False, why) when ``GET /api/kernels`` answers 404: the server has no Jupyter API."""
        http = self._http()
        try:
            r = await http.request("GET", "/api/kernels")
        finally:
            await http.close()
        if r.status == 404:
            return False, "GET /api/kernels answered 404: no Jupyter kernels API on this server yet"
        return True, f"GET /api/kernels answered {r.status}"

    async def start(self) -> JupyterKernel:
        """``POST /api/kernels`` then connect the channels WebSocket. Raises BenchError."""
        http = self._http()
        try:
            r = await http.request("POST", "/api/kernels", {"name": "python3"})
        except HttpError as exc:
            await http.close()
            raise BenchError(f"POST /api/kernels: {exc}") from exc
        if r.status not in (200, 201):
            await http.close()
            raise BenchError(f"POST /api/kernels: HTTP {r.status}: {r.body[:300]!r}")
        kernel = JupyterKernel(http, self.token, r.json()["id"])
        try:
            await kernel.connect()
        except BenchError:
            await kernel.close()
            raise
        return kernel
