"""Entrypoint: the cell that calls ``main()`` after a cell's code, and its JSON value read back.

The call runs in the kernel as a second execute request of the same run (``store_history``
off, so the execution count and ``_`` stay as the code left them), inside a private globals
dict so it adds no name to the user's namespace. The value travels as a display output of
its own MIME type, so it is bounded by ``max_output_bytes`` like any output and never reaches
the client as an output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.output import OutputCollector

MIME = "application/vnd.exec-gateway.entrypoint+json"

_CALL = '''
from IPython.display import display as _display
_main = _ns.get({name!r})
if not callable(_main):
    _display({{{mime!r}: '{{"missing": true}}'}}, raw=True)
else:
    import json as _json
    _value = _main()
    try:
        _text = _json.dumps({{"value": _value}}, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as _exc:
        raise TypeError("{name}() must return a JSON-serialisable value (no NaN or Infinity, "
                        "no cycles): " + str(_exc)) from None
    _display({{{mime!r}: _text}}, raw=True)
'''


def call_code(name: str) -> str:
    """The cell that calls ``name()`` and sends its value back (see the module docstring)."""
    source = _CALL.format(name=name, mime=MIME)
    return f"exec(compile({source!r}, '<entrypoint>', 'exec'), {{'_ns': get_ipython().user_ns}})"


def tidy_traceback(collector: OutputCollector) -> None:
    """Drop the generated call's own frame from an error's traceback (main()'s stay)."""
    if collector.error is not None:
        collector.error.traceback = [line for line in collector.error.traceback
                                     if "'<entrypoint>', 'exec')" not in line]


@dataclass(frozen=True)
class Returned:
    """What the entrypoint call sent back: ``missing`` (no such function) or ``value``."""

    missing: bool = False
    value: Any = None
    found: bool = False  # False: no answer came (the output was dropped, or the call failed)


def take_value(collector: OutputCollector) -> Returned:
    """Remove the entrypoint's answer (the last output of its type) from the collected
    outputs and decode it."""
    for i in reversed(range(len(collector.outputs))):
        text = collector.outputs[i].data.get(MIME)
        if isinstance(text, str):
            del collector.outputs[i]
            try:
                answer = json.loads(text)
            except (ValueError, RecursionError):
                return Returned()
            if not isinstance(answer, dict):
                return Returned()
            if answer.get("missing"):
                return Returned(missing=True, found=True)
            return Returned(value=answer.get("value"), found=True)
    return Returned()
