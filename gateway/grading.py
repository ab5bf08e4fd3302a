"""Grading: whether a test case's output and main() value are what was expected.

Compare modes (never a substring match):
- ``exact``: the same text, byte for byte.
- ``strip`` (default): trailing whitespace of each line and trailing blank lines (the final
  newline included) ignored.
- ``whitespace``: the same words; any run of whitespace equals any other, leading and
  trailing whitespace ignored.
- ``regex``: ``expected_stdout`` is a Python regular expression that must match the whole
  output (``re.fullmatch``, after ``strip``'s normalisation). A client's pattern could
  backtrack for ever, so it runs in a child process with a deadline, never in the gateway.

A failed comparison carries a short unified diff (expected → actual).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import re
import sys
from typing import Any

from gateway import errors

REGEX_DEADLINE_S = 2.0
MAX_DIFF_LINES = 40
MAX_DIFF_INPUT_LINES = 2000  # of each side: a diff of huge outputs would be slow and useless
_MATCHER = ("import json, re, sys; p, s = json.load(sys.stdin); "
            "sys.stdout.write('1' if re.fullmatch(p, s, re.DOTALL) else '0')")


def check_pattern(pattern: str) -> None:
    """Raises ValidationFailed if ``pattern`` is not a valid regular expression."""
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise errors.ValidationFailed(f"expected_stdout is not a valid regex: {exc}") from None


def normalise(text: str) -> str:
    """``strip``'s view of an output: no trailing whitespace on any line, no trailing blank
    lines."""
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")


async def stdout_matches(actual: str, expected: str, mode: str) -> bool:
    """Whether ``actual`` is ``expected`` under ``mode``. Raises TimeoutError when a regex
    takes longer than REGEX_DEADLINE_S."""
    if mode == "exact":
        return actual == expected
    if mode == "whitespace":
        return actual.split() == expected.split()
    if mode == "regex":
        return await _fullmatch(expected, normalise(actual))
    return normalise(actual) == normalise(expected)


async def _fullmatch(pattern: str, text: str) -> bool:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", "-c", _MATCHER, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(
            proc.communicate(json.dumps([pattern, text]).encode()), REGEX_DEADLINE_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return out == b"1"


def same_json(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0), but a bool is never a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def short_diff(expected: str, actual: str) -> str:
    """A unified diff (expected → actual) of at most MAX_DIFF_LINES lines; where the texts
    differ only in line endings or trailing whitespace, of the lines' reprs."""
    lines = _unified(expected.splitlines(), actual.splitlines())
    if not lines and expected != actual:
        lines = _unified([repr(x) for x in expected.splitlines(keepends=True)],
                         [repr(x) for x in actual.splitlines(keepends=True)])
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f"... ({len(lines) - MAX_DIFF_LINES} more lines)"]
    return "\n".join(line[:500] for line in lines)


def _unified(expected: list[str], actual: list[str]) -> list[str]:
    return list(difflib.unified_diff(expected[:MAX_DIFF_INPUT_LINES],
                                     actual[:MAX_DIFF_INPUT_LINES], "expected", "actual",
                                     n=2, lineterm=""))
