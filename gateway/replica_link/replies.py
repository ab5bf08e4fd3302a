"""What the forwarding front answers a client with: the owner's answer, with the handlers'
default headers, or an error of its own in the handlers' error JSON."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from http.client import responses

from tornado import httputil

from gateway.handlers.base import DEFAULT_HEADERS
from gateway.models import ErrorBody, ErrorDetail

Reply = tuple[int, list[tuple[str, str]], bytes]  # status, headers, body


@functools.lru_cache(maxsize=1)
def _date(second: int) -> str:
    """The Date header for ``second`` (made once a second, not once a call)."""
    return httputil.format_timestamp(second)


def error(status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()
          ) -> Reply:
    body = ErrorBody(error=ErrorDetail(code=code, message=message)).model_dump_json().encode()
    return status, list(headers), body


INTERNAL_ERROR = error(500, "internal_error", "internal error")


def head(code: int, headers: Iterable[tuple[str, str]], body: bytes
         ) -> tuple[list[tuple[str, str]], bytes]:
    """The headers (and body) of an answer: the handlers' defaults, the owner's, the date and
    the length (none, and no body, for 204)."""
    out = dict(DEFAULT_HEADERS)
    out.update(headers)
    out["Date"] = _date(int(time.time()))
    if code == 204:
        out.pop("Content-Type", None)
        body = b""
    else:
        out["Content-Length"] = str(len(body))
    return list(out.items()), body


def encode(code: int, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """The whole HTTP/1.1 response; raises ValueError for a header that would split it."""
    lines, body = head(code, headers, body)
    text = "".join(f"{name}: {value}\r\n" for name, value in lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("a newline in a forwarded answer's header")
    return (f"HTTP/1.1 {code} {responses.get(code, 'Unknown')}\r\n{text}\r\n"
            ).encode("latin-1") + body
