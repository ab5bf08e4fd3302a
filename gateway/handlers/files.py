"""Files API v1: a session's workspace over REST, bodies streamed both ways.

``PUT /v1/sessions/{id}/files/{path}`` (raw body), ``POST /v1/sessions/{id}/files``
(multipart), ``GET`` a file or a listing, ``DELETE``. An upload's placement is decided in
``prepare``, before its body arrives, so each chunk goes straight to the workspace here, or to
the replica serving the session (``StreamedCall``) — never into memory; so does a download.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import urllib.parse
from collections.abc import Awaitable
from typing import Protocol

from tornado import httputil

from gateway import errors
from gateway.handlers.base import FORWARDED_HEADER, ApiHandler, Services, forward_timeout_s
from gateway.handlers.streamed import StreamedCall
from gateway.models import FileList
from gateway.multipart import MultipartReader, Part, boundary_of
from gateway.sessions import Here, Session, There
from gateway.sessions.files import PendingUpload, SessionFiles
from gateway.workspace import split_path

MULTIPART_SLACK = 1024 * 1024  # part headers and delimiters on top of the files' bytes
MAX_FIELD_BYTES = 4096  # the ``path`` form field
_RELAYED = ("Content-Type", "Content-Length", "Content-Disposition", "Content-Security-Policy",
            "Location", "Retry-After")


class Sink(Protocol):
    """Where an upload's body goes, chunk by chunk; ``end`` answers the call."""

    async def feed(self, chunk: bytes) -> None: ...

    async def end(self, handler: FilesHandlerBase) -> None: ...


class FilesHandlerBase(ApiHandler):
    """Auth, the upload bound, and placement before the body; streamed bodies after."""

    def initialize(self, services: Services) -> None:
        super().initialize(services)
        self._sink: Sink | None = None
        self._failure: BaseException | None = None

    @property
    def files(self) -> SessionFiles:
        return self.services.manager.files

    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        self.authenticate()
        if self.request.method in ("PUT", "POST"):
            limit = self.services.settings.max_upload_bytes + (
                MULTIPART_SLACK if self.request.method == "POST" else 0)
            length = self._length()
            if length is not None and length > limit:
                raise errors.PayloadTooLarge(f"the upload is larger than max_upload_bytes="
                                             f"{self.services.settings.max_upload_bytes}")
            if self.request.connection is not None:  # beyond this tornado cuts the connection
                self.request.connection.set_max_body_size(2 * limit)  # type: ignore[attr-defined]
            self._sink = await self._place(self.path_kwargs["session_id"])
        self._prepared = True

    def _length(self) -> int | None:
        value = self.request.headers.get("Content-Length", "")
        return int(value) if value.isdigit() else None

    async def _place(self, session_id: str) -> Sink:
        """The sink for this upload: the workspace if the session is served here (opened
        if absent, like execute), else a streamed call to the replica that serves it."""
        manager = self.services.manager
        deadline: float | None = None
        while True:
            match await manager.locate(self.owner, session_id, open_if_absent=True,
                                       deadline=deadline):
                case Here(session):
                    return await self.local_sink(session)
                case There(url, deadline):
                    if self.request.headers.get(FORWARDED_HEADER):
                        raise errors.OwnerUnreachable(
                            "the session moved while the call was forwarded")
                    call = self._call(url)
                    try:
                        await call.open()
                    except errors.OwnerDown:
                        manager.mark_down(url)
                        continue
                    return _Forwarded(call)

    async def local_sink(self, session: Session) -> Sink:
        raise errors.MethodNotAllowed("no uploads here")

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:  # type: ignore[override]
        if self._sink is None or self._failure is not None:
            return None  # (the rest of a refused upload is read and dropped)
        return self._feed(self._sink, chunk)

    async def _feed(self, sink: Sink, chunk: bytes) -> None:
        try:
            await sink.feed(chunk)
        except Exception as exc:  # answered by the method, once the body is in
            self._failure = exc

    async def finish_upload(self) -> None:
        """Answer an upload: the failure met while streaming, or the sink's answer."""
        if self._failure is not None:
            self.on_connection_close()  # drops what was staged
            raise self._failure
        assert self._sink is not None
        await self._sink.end(self)

    def on_connection_close(self) -> None:
        if isinstance(self._sink, _Forwarded):
            self._sink.call.close()
        elif isinstance(self._sink, (_Put, _Multipart)):
            self._sink.abort()

    # ------------------------------------------------------------------ forwarding
    def _call(self, url: str) -> StreamedCall:
        headers = {FORWARDED_HEADER: self.services.settings.instance_id}
        for name in ("Authorization", "Content-Type", "Content-Length"):
            if name in self.request.headers:
                headers[name] = self.request.headers[name]
        return StreamedCall(url, self.request.method or "GET", self.request.uri or "/",
                            headers, self._relay_headers, self._relay_chunk,
                            forward_timeout_s(self.services.settings))

    async def forward_streamed(self, url: str) -> None:
        """Forward a body-less call, streaming the answer back (downloads)."""
        call = self._call(url)
        await call.open()
        await call.end()
        self.finish()

    def _relay_headers(self, code: int, headers: httputil.HTTPHeaders) -> None:
        self.set_status(code)
        self.clear_header("Content-Type")
        for name in _RELAYED:
            if name in headers:
                self.set_header(name, headers[name])

    async def _relay_chunk(self, chunk: bytes) -> None:
        self.write(chunk)
        await self.flush()


class FilesHandler(FilesHandlerBase):
    """``/v1/sessions/{id}/files``: list (GET), multipart upload (POST)."""

    async def get(self, session_id: str) -> None:
        path = self.get_query_argument("path", "")
        recursive = _flag(self.get_query_argument("recursive", "false"))

        async def serve(session: Session) -> None:
            self.send(await self.files.listing(session, path, recursive=recursive))

        await self.serve_or_forward(session_id, serve)

    async def local_sink(self, session: Session) -> Sink:
        content_type = self.request.headers.get("Content-Type", "")
        return _Multipart(self.files, session, MultipartReader(boundary_of(content_type)))

    async def post(self, session_id: str) -> None:
        await self.finish_upload()


class FileHandler(FilesHandlerBase):
    """``/v1/sessions/{id}/files/{path}``: download (GET), upload (PUT), delete (DELETE)."""

    async def local_sink(self, session: Session) -> Sink:
        path = self.path_kwargs["path"]
        return _Put(self.files, session, path,
                    await self.files.begin_upload(session, path, self._length()))

    async def put(self, session_id: str, path: str) -> None:
        await self.finish_upload()

    async def get(self, session_id: str, path: str) -> None:
        await self.serve_or_forward(session_id, lambda s: self._download(s, path),
                                    self.forward_streamed)

    async def delete(self, session_id: str, path: str) -> None:
        recursive = _flag(self.get_query_argument("recursive", "false"))

        async def serve(session: Session) -> None:
            await self.files.delete(session, path, recursive=recursive)
            self.no_content()

        await self.serve_or_forward(session_id, serve)

    async def _download(self, session: Session, path: str) -> None:
        fd, info = await self.files.open_read(session, path)
        try:
            name = path.rsplit("/", 1)[-1]
            self.set_header("Content-Type",
                            mimetypes.guess_type(name)[0] or "application/octet-stream")
            self.set_header("Content-Length", str(info.size))
            self.set_header("Content-Disposition",
                            f"attachment; filename*=UTF-8''{urllib.parse.quote(name)}")
            # the kernel chose these bytes: never let a browser run them on this origin
            self.set_header("Content-Security-Policy", "sandbox; default-src 'none'")
            left = info.size or 0
            reading = asyncio.ensure_future(self.files.read(fd, left)) if left else None
            try:
                while reading is not None:
                    data = await reading  # the next chunk is read while this one is sent
                    left -= len(data)
                    reading = asyncio.ensure_future(self.files.read(fd, left)) \
                        if data and left > 0 else None
                    self.write(data)  # (a file that shrank meanwhile: a short body)
                    await self.flush()
            finally:
                if reading is not None:  # the client went away: let the read end first
                    await asyncio.wait({reading})
        finally:
            os.close(fd)
        self.finish()


class _Put:
    def __init__(self, files: SessionFiles, session: Session, path: str,
                 pending: PendingUpload) -> None:
        self.files, self.session, self.path, self.pending = files, session, path, pending

    async def feed(self, chunk: bytes) -> None:
        await self.files.write(self.pending, chunk)

    async def end(self, handler: FilesHandlerBase) -> None:
        info, created = await self.files.commit(self.session, self.pending, self.path)
        handler.send(info, 201 if created else 200)

    def abort(self) -> None:
        self.pending.abort()


class _Multipart:
    """Each ``file`` part is staged in the workspace as it streams; at the end, once the
    ``path`` field (the target directory, often sent last) is known, all are put in place."""

    def __init__(self, files: SessionFiles, session: Session, reader: MultipartReader) -> None:
        self.files, self.session, self.reader = files, session, reader
        self.staged: list[tuple[str, PendingUpload]] = []
        self.current: PendingUpload | None = None
        self.field: bytearray | None = None  # the value of the ``path`` field being read
        self.directory = ""

    async def feed(self, chunk: bytes) -> None:
        for event in self.reader.feed(chunk):
            if isinstance(event, Part):
                await self._start(event)
            elif event is None:
                if self.current is not None:  # on disk before the next part comes
                    await self.files.drain(self.current)
                self._close_part()
            elif self.current is not None:
                await self.files.write(self.current, event)
            elif self.field is not None:
                self.field += event
                if len(self.field) > MAX_FIELD_BYTES:
                    raise errors.InvalidPath("the path field is too long")

    async def _start(self, part: Part) -> None:
        if part.name == "file":
            name = part.filename or ""
            if "/" in name or name in ("", ".", ".."):
                raise errors.InvalidPath(f"invalid file name {name!r}")
            self.current = await self.files.begin_upload(self.session, None, None)
            self.staged.append((name, self.current))
        elif part.name == "path":
            self.field = bytearray()
        else:
            raise errors.ValidationFailed(f"unknown multipart field {part.name!r}: "
                                          "expected 'file' parts and an optional 'path'")

    def _close_part(self) -> None:
        if self.field is not None:
            self.directory = self.field.decode("utf-8", "replace")
        self.current = self.field = None

    async def end(self, handler: FilesHandlerBase) -> None:
        try:
            self.reader.close()
            if not self.staged:
                raise errors.BadRequest("no 'file' part in the multipart body")
            prefix = "/".join(split_path(self.directory.strip("/"), root_ok=True))
            done = []
            for name, pending in self.staged:
                path = f"{prefix}/{name}" if prefix else name
                done.append((await self.files.commit(self.session, pending, path))[0])
        finally:
            self.abort()
        handler.send(FileList(files=done, truncated=False), 201)

    def abort(self) -> None:
        for _, pending in self.staged:
            pending.abort()


class _Forwarded:
    def __init__(self, call: StreamedCall) -> None:
        self.call = call

    async def feed(self, chunk: bytes) -> None:
        await self.call.write(chunk)

    async def end(self, handler: FilesHandlerBase) -> None:
        await self.call.end()
        handler.finish()


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("", "0", "false", "no"):
        return False
    raise errors.ValidationFailed("recursive must be true or false")

