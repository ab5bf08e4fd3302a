"""OutputCollector: folds one cell's iopub messages into an ExecuteResult, within a byte cap.

Whatever the kernel prints, the collector holds at most ``max_bytes`` of it; the rest is
counted as dropped and the result says ``truncated: true``.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.models import ErrorInfo, Output

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_MAX_TRACEBACK_LINES = 200


def clean(text: str) -> str:
    """``text`` without lone surrogates (a kernel may send them; JSON answers cannot hold them)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _clean_data(data: dict[str, Any]) -> dict[str, Any]:
    return {k: clean(v) if isinstance(v, str) else v for k, v in data.items()}


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def _data_size(data: dict[str, Any]) -> int:
    return sum(_size(v) if isinstance(v, str) else len(str(v)) for v in data.values())


def plain_traceback(lines: list[str]) -> list[str]:
    """Traceback lines without terminal colour codes, at most 200 of them."""
    return [_ANSI.sub("", line) for line in lines[:_MAX_TRACEBACK_LINES]]


class OutputCollector:
    """Called for each iopub message of one execute request, in order."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.truncated = False
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.outputs: list[Output] = []
        self.error: ErrorInfo | None = None

    def _take(self, size: int) -> bool:
        if self.used + size > self.max_bytes:
            self.truncated = True
            return False
        self.used += size
        return True

    def add(self, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type == "stream":
            self._add_stream(content.get("name", "stdout"), clean(str(content.get("text", ""))))
        elif msg_type in ("execute_result", "display_data"):
            data = _clean_data(content.get("data") or {})
            if self._take(_data_size(data)):
                metadata = content.get("metadata") or {}
                self.outputs.append(Output(type=msg_type, data=data, metadata=metadata))  # type: ignore[arg-type]
        elif msg_type == "error":
            traceback = plain_traceback([clean(str(t)) for t in content.get("traceback") or []])
            self.error = ErrorInfo(
                ename=clean(str(content.get("ename", "")))[:1000],
                evalue=clean(str(content.get("evalue", "")))[:10_000],
                traceback=[line[:10_000] for line in traceback],
            )
        elif msg_type == "clear_output":
            self.stdout.clear()
            self.stderr.clear()
            self.outputs.clear()
            self.used = 0

    def _add_stream(self, name: str, text: str) -> None:
        parts = self.stderr if name == "stderr" else self.stdout
        size = _size(text)
        room = self.max_bytes - self.used
        if size <= room:
            self.used += size
            parts.append(text)
            return
        self.truncated = True
        if room > 0:
            # cut on a character boundary within the remaining budget
            piece = text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
            self.used += _size(piece)
            parts.append(piece)
            self.used = self.max_bytes

    @property
    def stdout_text(self) -> str:
        return "".join(self.stdout)

    @property
    def stderr_text(self) -> str:
        return "".join(self.stderr)
