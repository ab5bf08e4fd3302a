"""A minimal HTTP/1.1 keep-alive client on asyncio streams, so client cost stays small.

Chosen over httpx and tornado's AsyncHTTPClient because the figure being measured is the
server's: one pre-encoded write per request, the head parsed with a few splits, no per-call
pool, header or URL objects. asyncio's TCP transports set TCP_NODELAY. Loopback only.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any


class HttpError(Exception):
    """A transport failure or a malformed answer (not a non-2xx status: see Response)."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def expect(self, *statuses: int) -> Response:
        """Return self if the status is one of ``statuses``; raises HttpError otherwise."""
        if self.status not in statuses:
            raise HttpError(f"HTTP {self.status}: {self.body[:300]!r}")
        return self


class HttpConnection:
    """One keep-alive connection; requests on it are sequential (reconnects when closed)."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the bench talks to loopback addresses only")
        self.host, self.port = host, port
        fixed = {"Host": f"{host}:{port}", **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # a connection the server closed while it was idle (its keep-alive timeout: a
        # section that opens many kernels first can take longer) has seen EOF: a new one
        if self._reader is None or self._writer is None or self._writer.is_closing() \
                or self._reader.at_eof():
            await self.close()
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def request(self, method: str, path: str, body: Any = None) -> Response:
        """Send one request (``body`` is JSON-encoded unless already bytes). Raises HttpError."""
        if isinstance(body, bytes):
            data = body
        else:
            data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\n{self._fixed}"
        if data or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        try:
            reader, writer = await self._connect()
            writer.write(head.encode("latin-1") + b"\r\n" + data)
            return await self._read_response(reader, method)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            await self.close()
            raise HttpError(f"{method} {path}: {exc!r}") from exc

    async def _read_response(self, reader: asyncio.StreamReader, method: str) -> Response:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"bad status line: {lines[0]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        else:
            body = await reader.read()
            await self.close()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, body)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def delete_quietly(http: HttpConnection, path: str) -> None:
    """DELETE ``path`` within 30 s, then close ``http``; failures are fine (the server's own
    shutdown stops the kernel)."""
    try:
        async with asyncio.timeout(30):
            await http.request("DELETE", path)
    except (TimeoutError, HttpError):
        pass
    await http.close()
