"""Relay: a client's WebSocket carried to the replica that owns its session, frame for frame.

A socket handler whose session lives on another replica (the manager located it ``There``)
opens the same path there in ``prepare()``, so a refusal is still a JSON HTTP error before the
client's upgrade; once the client is upgraded, frames flow both ways and a close on either
side closes the other with the same code. Each direction awaits its write before reading the
next frame, so a slow reader slows its sender instead of growing this gateway.
"""

from __future__ import annotations

import asyncio
import logging

import pydantic
from tornado import httpclient, websocket

from gateway import errors
from gateway.events import CLOSE_RECONNECT
from gateway.handlers.base import FORWARDED_HEADER
from gateway.models import ErrorBody
from gateway.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
# The owner's frames pass through whole: it already bounds what it sends (kernel output with
# Jupyter buffers can be large). This only stops a broken peer from exhausting memory here.
MAX_RELAYED_MESSAGE_BYTES = 128 * 1024 * 1024


class OwnerRefused(errors.GatewayError):
    """The owner refused the upgrade: its status and error, relayed as it answered them."""

    def __init__(self, status: int, body: ErrorBody) -> None:
        super().__init__(body.error.message, details=body.error.details)
        self.status, self.code = status, body.error.code


class Relay:
    """One client socket (``client``) joined to the same socket on the owning replica.

    The handler calls ``connect`` from ``prepare()``, ``start`` from ``open()``, ``send``
    from ``on_message`` and ``close`` from ``on_close`` (and when the upgrade did not happen).
    """

    def __init__(self, client: websocket.WebSocketHandler, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._upstream: websocket.WebSocketClientConnection | None = None
        self._pump: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, client: websocket.WebSocketHandler, settings: Settings,
                   base_url: str) -> Relay:
        """A relay for ``client``, connected to the same socket on ``base_url``."""
        relay = cls(client, settings)
        await relay.connect(base_url)
        return relay

    async def connect(self, base_url: str) -> None:
        """Open the client's path (and query: a ``?token=`` goes along) on ``base_url``.

        Raises BadRequest for a request that is no upgrade; OwnerDown when the owner refused
        the connection (it never saw the handshake); OwnerUnreachable when it cannot be
        reached otherwise; OwnerRefused when it answers the handshake with an error.
        """
        request = self._client.request
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise errors.BadRequest("this endpoint speaks WebSocket only (Upgrade: websocket)")
        headers = {FORWARDED_HEADER: self._settings.instance_id}
        for name in ("Authorization", "X-API-Key"):
            if name in request.headers:
                headers[name] = request.headers[name]
        offered = request.headers.get("Sec-WebSocket-Protocol")
        upstream = httpclient.HTTPRequest(
            base_url.replace("http", "ws", 1) + request.uri, headers=headers,
            connect_timeout=CONNECT_TIMEOUT_S,
            # the owner may still be starting the session's kernel when it gets the handshake
            request_timeout=CONNECT_TIMEOUT_S + self._settings.kernel_start_timeout_s,
        )
        ping_s = self._settings.ws_ping_interval_s or None
        try:
            self._upstream = await websocket.websocket_connect(
                upstream, max_message_size=MAX_RELAYED_MESSAGE_BYTES,
                ping_interval=ping_s, ping_timeout=ping_s,
                subprotocols=[p.strip() for p in offered.split(",")] if offered else None,
            )
        except httpclient.HTTPClientError as exc:
            raise _refusal(exc) from exc
        except ConnectionRefusedError as exc:  # it never saw the handshake
            raise errors.OwnerDown("the gateway that owns this session is down") from exc
        except (OSError, websocket.WebSocketError) as exc:
            raise errors.OwnerUnreachable(
                f"the gateway that owns this session cannot be reached: {exc}") from exc
        log.debug("relaying %s to %s", request.path, base_url)

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the owner selected (the client gets the same)."""
        return self._upstream.selected_subprotocol if self._upstream is not None else None

    def start(self) -> None:
        """The client is upgraded: pump the owner's frames to it."""
        # tornado turns TCP_NODELAY off after the 101 answer: small frames would wait ~40 ms
        self._client.set_nodelay(True)
        upstream = self._connected()
        if upstream.protocol is not None and upstream.protocol.stream is not None:
            upstream.protocol.stream.set_nodelay(True)
        self._pump = asyncio.create_task(self._to_client(upstream))

    async def _to_client(self, upstream: websocket.WebSocketClientConnection) -> None:
        try:
            while (message := await upstream.read_message()) is not None:
                await self._client.write_message(message, binary=isinstance(message, bytes))
        except websocket.WebSocketClosedError:
            self.close()  # the client went away (its on_close does the same)
            return
        code = _sendable(upstream.close_code)
        if code is None:
            self._client.close(CLOSE_RECONNECT, "lost the gateway that owns this session")
        else:
            self._client.close(code, upstream.close_reason)

    async def send(self, message: str | bytes) -> None:
        """A client frame, to the owner (awaited: the client's next frame waits for it)."""
        try:
            await self._connected().write_message(message, binary=isinstance(message, bytes))
        except websocket.WebSocketClosedError:
            pass  # the owner's side is closing: the pump closes the client with its code

    def close(self) -> None:
        """Close the owner's side with the client's close code (idempotent)."""
        if self._closed or self._upstream is None:
            return
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
        code = _sendable(self._client.close_code)
        self._upstream.close(code, self._client.close_reason if code is not None else None)

    def _connected(self) -> websocket.WebSocketClientConnection:
        if self._upstream is None:
            raise RuntimeError("Relay.connect() has not succeeded")
        return self._upstream


def _sendable(code: int | None) -> int | None:
    """``code`` if a close frame may carry it (1005, 1006 and 1015 only describe a close)."""
    if code is None or not 1000 <= code <= 4999 or code in (1004, 1005, 1006, 1015):
        return None
    return code


def _refusal(exc: httpclient.HTTPClientError) -> errors.GatewayError:
    """The owner's error answer to the handshake, or OwnerUnreachable when there is none."""
    response = exc.response
    if exc.code != 599 and response is not None:
        try:
            return OwnerRefused(exc.code, ErrorBody.model_validate_json(response.body))
        except (pydantic.ValidationError, ValueError):
            pass
    return errors.OwnerUnreachable(f"the gateway that owns this session answered {exc.code}")
