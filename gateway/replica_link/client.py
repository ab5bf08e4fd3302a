"""ReplicaLinks: the forwarding side — one long-lived link to each replica that serves
sessions this one is asked about, every forwarded REST call a numbered frame on it.

Several calls share a link at once (answers come back in any order, by number). A link is
opened on first use (``GET /v1/replica-link`` + ``Upgrade``, with the key of the call that
needed it) and kept until either side closes it; a call has one deadline, connect included.
What a failure means for the call decides what the forwarder may do next:

- ``OwnerDown``: the replica refused the connection or the link: it never saw the call, so
  the call may go elsewhere once the registry says where;
- ``Misdirected``: the replica said ``goaway`` before it took the call, or answered ``421``
  (the session is no longer served there): ask the registry again, nothing ran;
- ``OwnerUnreachable``: the link broke or the deadline passed with the call sent: it may
  have run there, so it is never replayed and the client hears what happened.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from tornado import httputil

from gateway import errors
from gateway.replica_link import frames

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
MAX_ANSWER_BYTES = 128 * 1024 * 1024
MAX_UPGRADE_ANSWER_BYTES = 16 * 1024
_AUTH_HEADERS = ("Authorization", "X-API-Key")


@dataclass(frozen=True)
class Answer:
    code: int
    headers: list[tuple[str, str]]
    body: bytes


Then = Callable[[asyncio.Future[Answer]], None]


class _Answered(asyncio.Future[Answer]):
    """A call's answer whose ``then`` runs the moment it settles, not a loop turn later (the
    forwarding front answers its client from it)."""

    then: Then | None = None

    def set_result(self, result: Answer, /) -> None:
        super().set_result(result)
        self._then()

    def set_exception(self, exception: type | BaseException, /) -> None:
        super().set_exception(exception)
        self._then()

    def _then(self) -> None:
        then, self.then = self.then, None
        if then is not None:
            try:
                then(self)
            except Exception:  # (its own bug: never the link's)
                log.exception("a forwarded call's answer was not handled")


def _late(answered: asyncio.Future[Answer]) -> None:
    if not answered.done():
        answered.set_exception(errors.OwnerUnreachable(
            "the gateway that owns this session did not answer in time"))


def _answer_of(frame: frames.Frame) -> Answer:
    """An answer frame as an Answer; raises FrameError when it has no status."""
    code = frame.head.get("code")
    if not isinstance(code, int) or not 100 <= code <= 599:
        raise frames.FrameError("an answer without a status")
    return Answer(code, frames.header_pairs(frame.head), frame.body)


class _Link(asyncio.Protocol):
    def __init__(self) -> None:
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.decoder = frames.Decoder(MAX_ANSWER_BYTES)
        self.pending: dict[int, asyncio.Future[Answer]] = {}
        self.numbers = itertools.count(1)
        self.usable = True  # no goaway, not closed
        self._upgrade_answer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            data = self._upgrade(data)
        try:
            for frame in self.decoder.feed(data):
                if frame.call == frames.CONTROL:
                    self._goaway(frame.head.get("goaway"))
                elif (waiting := self.pending.pop(frame.call, None)) is not None \
                        and not waiting.done():
                    try:
                        answer = _answer_of(frame)
                    except frames.FrameError as exc:
                        waiting.set_exception(errors.OwnerUnreachable(
                            f"the replica link broke: {exc}"))
                        raise
                    if answer.code == errors.Misdirected.status:
                        waiting.set_exception(errors.Misdirected(
                            "the replica no longer serves the session"))
                    else:
                        waiting.set_result(answer)
        except frames.FrameError as exc:
            self._fail(errors.OwnerUnreachable(f"the replica link broke: {exc}"))

    def _upgrade(self, data: bytes) -> bytes:
        """The answer to the upgrade request; returns the bytes after it."""
        self._upgrade_answer += data
        end = self._upgrade_answer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._upgrade_answer) > MAX_UPGRADE_ANSWER_BYTES:
                self._fail(errors.OwnerUnreachable("the replica answered the link with junk"))
            return b""
        first = bytes(self._upgrade_answer[:self._upgrade_answer.find(b"\r\n")])
        rest = bytes(self._upgrade_answer[end + 4:])
        try:
            code = httputil.parse_response_start_line(first.decode("latin-1")).code
        except httputil.HTTPInputError:
            code = 0
        if code == 101:
            self.upgraded.set_result(None)
            return rest
        # 503: stopping or full, 404: a replica without links: it did not take the call
        self._fail(errors.OwnerDown(f"the owning replica refused a replica link (HTTP {code})"))
        return b""

    def _goaway(self, last: object) -> None:
        self.usable = False
        last = last if isinstance(last, int) else 0
        for number in [n for n in self.pending if n > last]:
            waiting = self.pending.pop(number)
            if not waiting.done():
                waiting.set_exception(errors.Misdirected("the owning replica is stopping"))

    def _fail(self, exc: errors.OwnerUnreachable) -> None:
        self.usable = False
        if not self.upgraded.done():
            self.upgraded.set_exception(exc)
        pending, self.pending = self.pending, {}
        for waiting in pending.values():
            if not waiting.done():
                waiting.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(errors.OwnerUnreachable(
            f"the link to the owning replica was lost during the call ({exc or 'closed'})"))

    def send(self, method: str, uri: str, headers: list[tuple[str, str]], body: bytes,
             deadline: float, then: Then | None = None) -> asyncio.Future[Answer]:
        """One call sent on this link now; its answer (or failure) by ``deadline`` (the
        loop's clock), given to ``then`` as soon as it is there."""
        if not self.usable or self.transport is None or self.transport.is_closing():
            raise errors.Misdirected("the replica link closed before the call was sent")
        loop = asyncio.get_running_loop()
        number = next(self.numbers)
        answered = self.pending[number] = _Answered(loop=loop)
        answered.then = then
        self.transport.write(frames.encode(
            number, {"method": method, "uri": uri, "headers": headers}, body))
        late = loop.call_at(deadline, _late, answered)

        def settled(_: asyncio.Future[Answer]) -> None:
            late.cancel()
            self.pending.pop(number, None)

        answered.add_done_callback(settled)
        return answered

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ReplicaLinks:
    def __init__(self) -> None:
        self._links: dict[str, asyncio.Future[_Link]] = {}

    def send(self, base_url: str, method: str, uri: str, headers: dict[str, str],
             body: bytes, timeout_s: float, then: Then | None = None
             ) -> asyncio.Future[Answer] | None:
        """The call sent at once on the open link to ``base_url``, its answer given to ``then``
        the moment it is there; None when that link is not open (``fetch`` opens it). The
        answer fails as ``fetch`` says."""
        opening = self._links.get(base_url)
        if opening is None or not opening.done() or opening.cancelled() \
                or opening.exception() is not None or not opening.result().usable:
            return None
        deadline = asyncio.get_running_loop().time() + timeout_s
        return opening.result().send(method, uri, list(headers.items()), body, deadline, then)

    async def fetch(self, base_url: str, method: str, uri: str, headers: dict[str, str],
                    body: bytes, timeout_s: float) -> Answer:
        """Send one call to the replica at ``base_url`` and wait for its whole answer, within
        ``timeout_s``. Raises OwnerDown, Misdirected, OwnerUnreachable (see the module)."""
        answered = self.send(base_url, method, uri, headers, body, timeout_s)
        if answered is not None:
            return await answered
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                link = await self._link(base_url, headers)
        except TimeoutError:
            raise errors.OwnerUnreachable(
                "the gateway that owns this session could not be reached in time") from None
        return await link.send(method, uri, list(headers.items()), body, deadline)

    async def _link(self, base_url: str, headers: dict[str, str]) -> _Link:
        opening = self._links.get(base_url)
        if opening is not None and (not opening.done() or (
                opening.exception() is None and opening.result().usable)):
            return await asyncio.shield(opening)
        opening = self._links[base_url] = asyncio.ensure_future(self._open(base_url, headers))
        opening.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(opening)

    async def _open(self, base_url: str, headers: dict[str, str]) -> _Link:
        url = urllib.parse.urlsplit(base_url)
        auth = "".join(f"{name}: {headers[name]}\r\n" for name in _AUTH_HEADERS
                       if name in headers)
        link: _Link | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                transport, link = await asyncio.get_running_loop().create_connection(
                    _Link, url.hostname or "127.0.0.1", url.port or 80)
                frames.keep_alive(transport.get_extra_info("socket"))
                transport.write(
                    f"GET {frames.PATH} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                    f"Connection: Upgrade\r\nUpgrade: {frames.PROTOCOL}\r\n{auth}\r\n".encode())
                await link.upgraded
        except ConnectionRefusedError as exc:
            raise errors.OwnerDown("the gateway that owns this session is down") from exc
        except (OSError, TimeoutError) as exc:
            raise errors.OwnerUnreachable(
                f"the gateway that owns this session cannot be reached: {exc!r}") from exc
        finally:
            if link is not None and not link.upgraded.done():
                link.close()  # (cancelled or timed out mid-upgrade)
        return link

    def close(self) -> None:
        """Close every link (their pending calls fail as unreachable)."""
        for opening in self._links.values():
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                opening.result().close()
            else:
                opening.cancel()
        self._links.clear()
