"""What the sync and async clients share: settings from arguments or the environment, the retry
policy, request and URL building. No I/O here."""

from __future__ import annotations

import os
import random
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx

from exec_gateway_client import errors

ENV_URL = "EXEC_GATEWAY_URL"
ENV_TOKEN = "EXEC_GATEWAY_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8888"
SERVER_MAX_TIMEOUT_S = 600.0  # the server's default max_timeout_s: the backstop of a run
WS_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# 503 codes raised before a call runs anything: a retry never runs a cell twice
RETRYABLE_503 = {"capacity_exceeded", "kernel_start_failed", "launcher_unavailable",
                 "registry_unavailable"}


@dataclass(frozen=True)
class Config:
    """One client's settings. ``timeout_s`` bounds every call but cells; a cell's call is bounded
    by its own ``timeout_s`` (or the server's maximum) plus ``run_margin_s`` (queueing, the
    server's timeout ladder, a kernel restart)."""

    url: str
    token: str | None
    timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    run_margin_s: float = 60.0
    retries: int = 4
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0
    reconnects: int = 5

    @classmethod
    def make(cls, url: str | None, token: str | None, **kw: Any) -> Config:
        """Arguments win over ``EXEC_GATEWAY_URL`` / ``EXEC_GATEWAY_TOKEN``."""
        base = (url or os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"the gateway URL must start with http:// or https://: {base!r}")
        return cls(url=base, token=token if token is not None else os.environ.get(ENV_TOKEN),
                   **kw)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def timeout(self, read_s: float | None = None) -> httpx.Timeout:
        return httpx.Timeout(read_s or self.timeout_s, connect=self.connect_timeout_s)

    def run_deadline_s(self, cell_timeout_s: float | None) -> float:
        """How long a client waits for a cell's answer before giving up on it."""
        return (cell_timeout_s or SERVER_MAX_TIMEOUT_S) + self.run_margin_s

    def ws_url(self, session_id: str, since: int | None) -> str:
        parts = urllib.parse.urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        path = f"{parts.path}/v1/sessions/{quote(session_id)}/ws"
        query = urllib.parse.urlencode({"since": since}) if since is not None else ""
        return urllib.parse.urlunsplit((scheme, parts.netloc, path, query, ""))

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter for attempt 0, 1, ..."""
        delay: float = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
        return delay * (0.5 + random.random() / 2)

    def retry_delay(self, attempt: int, exc: Exception, *, replay_safe: bool) -> float | None:
        """Seconds to wait before retrying a call that failed with ``exc``, or None to give up.

        429 is always retried (the server refused the call before running it), as are the 503s
        raised before anything ran; other 503s, and connections lost mid-call, only when
        ``replay_safe`` (never a cell: it may have run). ``Retry-After`` wins over the backoff.
        """
        if attempt >= self.retries:
            return None
        if isinstance(exc, errors.APIError):
            retryable = (exc.status == 429 or (exc.status == 503 and (
                replay_safe or exc.code in RETRYABLE_503)))
            if not retryable:
                return None
            if exc.retry_after_s is not None:
                return min(exc.retry_after_s, self.max_retry_after_s)
            return self.backoff(attempt)
        if isinstance(exc, httpx.ConnectError) or (replay_safe and isinstance(
                exc, httpx.TransportError) and not isinstance(exc, httpx.TimeoutException)):
            return self.backoff(attempt)
        return None


def quote(session_id: str) -> str:
    return urllib.parse.quote(session_id, safe="")


def check(response: httpx.Response) -> httpx.Response:
    """``response`` if it is a success; raises its typed ``APIError`` otherwise."""
    if response.is_success:
        return response
    raise errors.from_answer(response.status_code, response.content, response.headers)


def transport_error(exc: httpx.HTTPError, method: str, url: str) -> errors.TransportError:
    """An httpx failure as this package's error (raise it ``from exc``)."""
    if isinstance(exc, httpx.TimeoutException):
        return errors.RequestTimeout(f"{method} {url}: no answer in time ({exc!r})")
    return errors.TransportError(f"{method} {url}: {exc!r}")


EXIT_CODES = {"ok": 0, "error": 1, "timeout": 124, "interrupted": 130, "memory_exceeded": 137,
              "dead": 134, "restore_failed": 1}
