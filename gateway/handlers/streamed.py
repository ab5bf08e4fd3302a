"""StreamedCall: one HTTP/1.1 call to another replica whose bodies stream both ways with
backpressure, so forwarding a file never holds it in memory.

Tornado's AsyncHTTPClient cannot push back on a response body (``streaming_callback`` is
synchronous); its ``HTTP1Connection`` can: a delegate's ``data_received`` may return an
awaitable, and the next chunk is read only once it is done. So the forwarding replica reads
the owner's answer only as fast as its own client takes it, and sends an upload on only as fast
as the owner writes it: at most a few 64 KiB chunks are in flight whatever the file's size.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable, Callable

from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.tcpclient import TCPClient

from gateway import errors

OnHeaders = Callable[[int, httputil.HTTPHeaders], None]
OnChunk = Callable[[bytes], Awaitable[None]]
_NO_LIMIT = 1 << 62  # the owner's own limits bound the body; this side only relays it


class StreamedCall(httputil.HTTPMessageDelegate):
    def __init__(self, base_url: str, method: str, uri: str, headers: dict[str, str],
                 on_headers: OnHeaders, on_chunk: OnChunk, timeout_s: float) -> None:
        self._url = urllib.parse.urlsplit(base_url)
        self._method = method
        self._uri = uri
        self._headers = headers
        self._on_headers = on_headers
        self._on_chunk = on_chunk
        self._timeout_s = timeout_s
        self._conn: HTTP1Connection | None = None
        self._response: asyncio.Task[bool] | None = None
        self.code = 0

    async def open(self) -> None:
        """Connect and send the request head. Raises OwnerDown (refused: safe to retry
        elsewhere), OwnerUnreachable."""
        host = self._url.hostname or "127.0.0.1"
        port = self._url.port or (443 if self._url.scheme == "https" else 80)
        try:
            stream = await asyncio.wait_for(
                TCPClient().connect(host, port, ssl_options=(
                    {} if self._url.scheme == "https" else None)), self._timeout_s)
        except (ConnectionRefusedError, iostream.StreamClosedError) as exc:
            refused = isinstance(exc, ConnectionRefusedError) or isinstance(
                getattr(exc, "real_error", None), ConnectionRefusedError)
            if refused:  # it never saw the call: safe to try again
                raise errors.OwnerDown("the gateway that owns this session is down") from exc
            raise errors.OwnerUnreachable(
                f"the gateway that owns this session cannot be reached: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            raise errors.OwnerUnreachable(
                f"the gateway that owns this session cannot be reached: {exc}") from exc
        stream.set_nodelay(True)
        self._conn = HTTP1Connection(stream, True, HTTP1ConnectionParameters(
            no_keep_alive=True, max_body_size=_NO_LIMIT, decompress=False))
        head = httputil.HTTPHeaders({**self._headers, "Host": self._url.netloc})
        start = httputil.RequestStartLine(self._method, self._uri, "HTTP/1.1")
        await self._guard(self._conn.write_headers(start, head))
        # read the answer from now on: the owner may refuse an upload before its end
        self._response = asyncio.ensure_future(self._conn.read_response(self))

    @property
    def answered(self) -> bool:
        """The owner has answered (an upload's remaining bytes are not wanted then)."""
        return self._response is not None and self._response.done()

    async def write(self, chunk: bytes) -> None:
        """Send a piece of the request body, once the owner has taken the previous one."""
        assert self._conn is not None
        if not self.answered:
            await self._guard(self._conn.write(chunk))

    async def end(self) -> None:
        """Finish the request and relay the whole answer (``on_headers``, then each chunk
        through ``on_chunk``). Raises OwnerUnreachable."""
        assert self._conn is not None and self._response is not None
        try:
            if not self.answered:
                self._conn.finish()
            await asyncio.wait_for(asyncio.shield(self._response), self._timeout_s)
        except (iostream.StreamClosedError, httputil.HTTPInputError, TimeoutError) as exc:
            raise errors.OwnerUnreachable(
                f"the gateway that owns this session did not answer: {exc}") from exc
        finally:
            self.close()
        if not self.code:
            raise errors.OwnerUnreachable("the gateway that owns this session did not answer")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._response is not None and not self._response.done():
            self._response.cancel()

    async def _guard(self, sent: Awaitable[None]) -> None:
        try:
            await sent
        except iostream.StreamClosedError:
            if not self.answered:  # an answer already in means: the owner refused the rest
                self.close()
                raise errors.OwnerUnreachable(
                    "the gateway that owns this session closed the connection") from None

    # ------------------------------------------------------------------ HTTPMessageDelegate
    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> None:
        assert isinstance(start_line, httputil.ResponseStartLine)
        self.code = start_line.code
        self._on_headers(start_line.code, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None]:
        return self._on_chunk(chunk)

    def finish(self) -> None:
        return None

    def on_connection_close(self) -> None:
        return None
