"""ContainerExits: how the Docker launcher learns that a kernel's container stopped, and why.

ONE engine event stream (``die``/``oom`` of every container this project labels, whichever
gateway created it) is read by a background thread; each death is then inspected for its exit
code and OOM kill, and wakes that container's waiter. If the stream breaks, it is reopened from
the last event seen and every watched container is asked about (deaths during the gap).

Also here: the engine's errors as the one domain error (``engine_errors``) and the labels every
container of this project carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions

from gateway.errors import LauncherUnavailable
from gateway.launchers import ExitInfo

log = logging.getLogger(__name__)

LABEL_MANAGED = "exec-gateway.managed"  # "true" on every container this project creates
LABEL_GATEWAY = "exec-gateway.gateway"  # settings.instance_id of the creating gateway
LABEL_SESSION = "exec-gateway.session_id"
LABEL_KERNEL = "exec-gateway.kernel_id"
LABEL_OWNER = "exec-gateway.owner"  # the API key's name, never its token
LABEL_SOCKET_DIR = "exec-gateway.socket_dir"

# Errors that mean "the engine cannot be reached", as opposed to "it refused this request".
UNREACHABLE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
ENGINE_ERRORS = (docker.errors.DockerException, *UNREACHABLE)  # what an engine call raises


@contextlib.contextmanager
def engine_errors(doing: str) -> Iterator[None]:
    """Engine errors as the one domain error callers handle, ``doing: <the error>`` (httpx's
    ``map_httpcore_exceptions``); the engine's own exception stays the ``__cause__``."""
    try:
        yield
    except ENGINE_ERRORS as exc:
        raise LauncherUnavailable(f"{doing}: {exc}") from exc


def exit_info(exit_code: int | None, oom_killed: bool) -> ExitInfo:
    """Exit status of the container's init: 128+N means the kernel died of signal N."""
    if oom_killed:
        return ExitInfo(exit_code=exit_code, oom_killed=True)
    if exit_code is not None and 128 < exit_code < 128 + 65:
        return ExitInfo(exit_code=exit_code, signal=exit_code - 128)
    return ExitInfo(exit_code=exit_code)


class ContainerExits:
    """A future per watched container, resolved with its ``ExitInfo`` when it stops."""

    def __init__(self, api_timeout_s: float) -> None:
        self._timeout_s = api_timeout_s
        self._client: docker.DockerClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exits: dict[str, asyncio.Future[ExitInfo]] = {}  # container id → its exit
        self._oom_seen: set[str] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._stream: Any = None  # the open docker CancellableStream
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()
        self._stopping = threading.Event()

    @property
    def following(self) -> bool:
        return self._subscribed.is_set()

    async def follow(self, client: docker.DockerClient) -> None:
        """Start reading the engine's events (once) and return when the stream is open.
        Raises LauncherUnavailable."""
        if self._thread is None:
            self._client = client
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._read, name="docker-events",
                                            daemon=True)
            self._thread.start()
        if not await asyncio.to_thread(self._subscribed.wait, self._timeout_s):
            raise LauncherUnavailable("the Docker engine's event stream did not open")

    def watch(self, container_id: str) -> asyncio.Future[ExitInfo]:
        """The container's exit (made on first call)."""
        exited = self._exits.get(container_id)
        if exited is None:
            exited = asyncio.get_running_loop().create_future()
            self._exits[container_id] = exited
        return exited

    def get(self, container_id: str) -> asyncio.Future[ExitInfo] | None:
        return self._exits.get(container_id)

    def forget(self, container_id: str) -> None:
        self._exits.pop(container_id, None)
        self._oom_seen.discard(container_id)

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """``State`` of the container, or None if it is gone or the engine did not answer."""
        if self._client is None:
            return None
        try:
            attrs = await asyncio.to_thread(self._client.api.inspect_container, container_id)
        except ENGINE_ERRORS:
            return None
        state: dict[str, Any] = attrs.get("State") or {}
        return state

    async def close(self) -> None:
        """Stop reading (the client is the caller's to close); waiters are cancelled."""
        self._stopping.set()
        stream, thread = self._stream, self._thread
        if stream is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(stream.close)
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)
        for exited in self._exits.values():
            if not exited.done():
                exited.cancel()

    # ------------------------------------------------------------------ the reader thread
    def _read(self) -> None:
        """Background thread: follow die/oom events of this project's containers; reconnect
        (replaying from the last event seen) if the stream breaks."""
        assert self._client is not None
        filters = {
            "type": "container",
            "event": ["die", "oom"],
            # every gateway's: a kernel taken over from a crashed replica keeps that label
            "label": [f"{LABEL_MANAGED}=true"],
        }
        since: int | None = None
        backoff_s = 0.1
        while not self._stopping.is_set():
            try:
                stream = self._client.api.events(filters=filters, since=since, decode=True)
            except ENGINE_ERRORS as exc:
                log.warning("docker event stream unavailable, retrying: %s", exc)
                self._stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
                continue
            self._stream = stream
            if self._stopping.is_set():  # close() ran while this stream was opening
                stream.close()
                return
            reconnected = self._subscribed.is_set()
            self._subscribed.set()
            backoff_s = 0.1
            if reconnected:  # deaths during the gap: ask the engine about every kernel
                self._post(self._reconcile)
            try:
                for event in stream:
                    since = int(event.get("time", time.time()))
                    self._post(self._on_event, event)
            except (*ENGINE_ERRORS, OSError, ValueError) as exc:
                if not self._stopping.is_set():
                    log.warning("docker event stream broke, reconnecting: %s", exc)
            with contextlib.suppress(Exception):
                stream.close()

    def _post(self, func: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(func, *args)

    # ------------------------------------------------------------------ on the event loop
    def _on_event(self, event: dict[str, Any]) -> None:
        action = event.get("Action") or event.get("status")
        actor = event.get("Actor") or {}
        container_id = actor.get("ID") or event.get("id", "")
        if action == "oom" and container_id in self._exits:
            self._oom_seen.add(container_id)
        elif action == "die" and container_id in self._exits:
            code = actor.get("Attributes", {}).get("exitCode")
            fallback = int(code) if code is not None and str(code).isdigit() else None
            self._spawn(self._resolve(container_id, fallback))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # a reference, so the task is not collected mid-way
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, container_id: str, fallback_code: int | None) -> None:
        """The container stopped: read why (OOMKilled, exit code) and wake its waiters."""
        exited = self._exits.get(container_id)
        if exited is None or exited.done():
            return
        state = await self.state(container_id)
        if state is not None and state.get("Running"):
            return  # a stale or replayed event
        code = state.get("ExitCode", fallback_code) if state else fallback_code
        oom = bool(state and state.get("OOMKilled")) or container_id in self._oom_seen
        # an OOM kill of some child process does not make a later exit(1) an OOM death
        info = exit_info(code, oom and code == 128 + signal.SIGKILL)
        self._oom_seen.discard(container_id)
        if not exited.done():
            exited.set_result(info)

    def _reconcile(self) -> None:
        for container_id, exited in list(self._exits.items()):
            if not exited.done():
                self._spawn(self._resolve(container_id, None))
