"""Bounds: the one way kernel output is measured, cleaned and cut before it reaches a client.

Everything a kernel sends is hostile by assumption. Sizes are UTF-8 bytes of the JSON a
client would receive (strings, keys, and a little per container and per output), measured the
same way for the REST result, the WebSocket events and the replay log. Walks are iterative
and bounded in depth (``MAX_DEPTH``): no kernel-made nesting can raise RecursionError here.
Lone surrogates (which JSON answers cannot hold) become U+FFFD.
"""

from __future__ import annotations

import re
from typing import Any

MAX_DEPTH = 64  # deepest nesting of a kernel message's content or metadata that is accepted
OUTPUT_OVERHEAD = 64  # bytes charged per output besides its data and metadata
_CONTAINER = 2  # brackets
_SEPARATOR = 4  # quotes, colon, comma
_SCALAR = 8  # a number, true, false, null

TOO_DEEP = "<nested too deeply>"
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` without lone surrogates."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # (a pair never reaches a str: JSON decoding joins it)
        return _SURROGATE.sub("\ufffd", text)


def text_size(text: str) -> int:
    """UTF-8 bytes of ``text`` (lone surrogates count as the 3-byte replacement)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def cut_text(text: str, max_bytes: int) -> tuple[str, bool]:
    """``text`` cut on a character boundary to at most ``max_bytes``; (text, cut)."""
    if text_size(text) <= max_bytes:
        return text, False
    return text.encode("utf-8", "replace")[:max(0, max_bytes)].decode("utf-8", "ignore"), True


def depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and dicts nest deeper than ``limit`` in ``value`` (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def sanitized(value: Any, max_depth: int = MAX_DEPTH) -> tuple[Any, int]:
    """A JSON-safe copy of ``value`` (cleaned strings and keys, containers nested deeper than
    ``max_depth`` replaced by a marker) and its size in bytes. Iterative."""
    size = 0
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]  # (item, parent, slot, depth)
    while stack:
        item, parent, slot, depth = stack.pop()
        if isinstance(item, (dict, list)) and depth >= max_depth:
            item = TOO_DEEP
        if isinstance(item, str):
            out: Any = clean_text(item)
            size += text_size(out) + _SEPARATOR
        elif isinstance(item, dict):
            out = {}
            size += _CONTAINER
            for key, child in item.items():
                name = clean_text(str(key))
                size += text_size(name) + _SEPARATOR
                out[name] = None
                stack.append((child, out, name, depth + 1))
        elif isinstance(item, list):
            out = [None] * len(item)
            size += _CONTAINER
            stack.extend((child, out, i, depth + 1) for i, child in enumerate(item))
        elif item is None or isinstance(item, (bool, int, float)):
            out = item
            size += _SCALAR
        else:  # not JSON (a kernel message is parsed JSON; this is for our own callers)
            out = clean_text(str(item))
            size += text_size(out) + _SEPARATOR
        parent[slot] = out
    return root[0], size


def json_size(value: Any) -> int:
    """The size ``sanitized`` would report, without copying (for values already clean)."""
    size = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += text_size(item) + _SEPARATOR
        elif isinstance(item, dict):
            size += _CONTAINER + sum(text_size(str(k)) + _SEPARATOR for k in item)
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            size += _CONTAINER
            stack.extend(item)
        else:
            size += _SCALAR
    return size
