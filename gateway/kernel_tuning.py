"""Kernel tuning: ipykernel and IPython set up to answer a cell with less work than stock,
every behaviour a user sees kept.

What a stock kernel does per ``execute_request`` that this module removes (each measured, see
the README's performance section):

- **History on disk**: IPython writes every cell to an SQLite file through a saving thread
  (lock hand-offs with it on every cell). A kernel's IPython directory lives and dies with the
  kernel (a tmpfs in the container, the socket directory locally), so the file is never read
  again: history goes to an in-memory SQLite database instead, written synchronously after
  each cell. ``In``, ``Out``, ``_i<n>``, ``%history`` (``-g`` and ``-l`` included), ``%rerun``
  and ``%recall`` see exactly what they saw.
- **``_execute_sleep``**: a 0.5 ms ``time.sleep`` before every ``execute_reply`` (a workaround
  ipykernel keeps for clients that read the reply before the output): off. The output still
  precedes the ``idle`` status on iopub, which is what the gateway waits for.
- **Top-level ``await`` detection**: IPython compiles every cell one extra time (twice per
  execute) to learn whether it needs the asyncio runner. A cell whose text contains neither
  ``await`` nor ``async`` cannot, so those skip the compile; ``autoawait`` itself stays on.
- **Blocking ``flush()`` round trips**: ipykernel flushes ``sys.stdout``/``sys.stderr`` several
  times per cell, each a hand-off to the iopub thread and a wait for it, even when nothing was
  written. Here a flush with nothing buffered and no flush pending returns at once; one with
  output does the full round trip, so output still comes before what follows it.
- **Display formatting of plain values**: the display hook runs all ten mimetype formatters for
  an ``int``. For exact built-in scalar types (int, float, str...) no formatter but
  ``text/plain`` can produce anything unless a printer was registered for the type (or a base
  of it), which is checked on every call: without one, only ``text/plain`` runs.
- **``inspect.signature`` per request**: ipykernel inspects ``run_cell``'s signature on every
  execute; the answer is cached per function.
- **DEBUG log records nobody shows**: the kernel's logger is at DEBUG, its handler at WARNING,
  so several records per message are built and dropped; the logger's level is raised to what
  its handlers show.
- **The IOPub thread hand-off** per iopub message: ``kernel_iopub.py`` (installed by
  ``kernel_boot.py`` before the app starts) sends directly when that thread is idle.
- **The shell-channel thread** (ipykernel 7: kernel subshells): every shell message crosses an
  extra thread and inproc socket pair. It is turned off unless ``EXEC_GATEWAY_KERNEL_SUBSHELLS``
  is ``1`` (the gateway's ``kernel_subshells`` setting): a *visible* change, since the kernel
  then no longer advertises ``kernel subshells`` in ``kernel_info`` (ipykernel 6, the Docker
  image's, has none either way).

Every lever is applied only where the installed ipykernel/IPython has the internals it relies
on (checked here, pinned by tests/test_kernel_tuning.py); otherwise stock behaviour stays.

Stand-alone on purpose (no gateway imports): the Docker kernel image ships this file next to
``kernel_boot.py``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

SUBSHELLS_ENV = "EXEC_GATEWAY_KERNEL_SUBSHELLS"
DEBUGGER_ENV = "EXEC_GATEWAY_KERNEL_DEBUGGER"
# what the kernel takes from jupyter_client's package: ipykernel.connect's two functions, and
# the default of a trait of jupyter_client.connect's ConnectionFileMixin (resolved, never used)
_JUPYTER_CLIENT_LIGHT = {"write_connection_file": "jupyter_client.connect",
                         "find_connection_file": "jupyter_client.connect",
                         "BlockingKernelClient": "jupyter_client.blocking"}
# exact types whose display can only come from text/plain or a printer registered for them
_PLAIN_TYPES = frozenset({int, float, complex, bool, str, bytes})
_HISTORY_WRITE_EVERY = 100  # cells kept in the in-memory history's cache at most


def subshells_wanted(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(SUBSHELLS_ENV, "") in ("1", "true", "yes")


def debugger_wanted(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(DEBUGGER_ENV, "") in ("1", "true", "yes")


def lazy_jupyter_client() -> bool:
    """``jupyter_client``'s package without its ``__init__`` until something asks for a name
    it exports: the kernel needs only ``session``, ``connect`` and a few more submodules, which
    import as usual, while ``__init__`` pulls in every client, manager and provisioner (with an
    entry-point scan). Any other attribute (``jupyter_client.KernelManager``...) runs the real
    ``__init__`` first, so user code sees the whole package."""
    if "jupyter_client" in sys.modules:
        return False
    spec = importlib.util.find_spec("jupyter_client")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return False
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(name: str) -> Any:
        if name in _JUPYTER_CLIENT_LIGHT and "__getattr__" in module.__dict__:
            return getattr(importlib.import_module(_JUPYTER_CLIENT_LIGHT[name]), name)
        if "__getattr__" in module.__dict__:
            del module.__dict__["__getattr__"]
            loader.exec_module(module)  # the real __init__, once
        try:
            return module.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'jupyter_client' has no attribute {name!r}") from None

    module.__dict__["__getattr__"] = __getattr__
    sys.modules["jupyter_client"] = module
    return True


class _NoShellChannel:
    """Stands for ipykernel 7's shell-channel thread when subshells are off: falsy, so the app
    and the kernel route shell messages straight to the main thread (they test it for truth),
    with the one attribute ipykernel still reads from it on that path (``parent_thread``)."""

    def __init__(self) -> None:
        self.parent_thread = threading.current_thread()

    def __bool__(self) -> bool:
        return False


def make_app() -> Any:
    """The kernel application (an ``IPKernelApp``), configured; call ``initialize()`` on it,
    then ``tune(app)``, then ``start()``."""
    lazy_jupyter_client()
    if not debugger_wanted():
        # ipykernel imports debugpy (~0.15 s, more in a container) to offer Jupyter's
        # debugger; unimportable until tune() the kernel reports no debugger
        sys.modules.setdefault("debugpy", None)  # type: ignore[arg-type]
    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelapp import IPKernelApp
    from traitlets.config import Config

    drop_channel_thread = not subshells_wanted() and hasattr(IPythonKernel,
                                                             "_supports_kernel_subshells")

    class TunedKernel(IPythonKernel):  # type: ignore[misc]
        @property
        def _supports_kernel_subshells(self) -> bool:
            return bool(self.shell_channel_thread)

    class TunedKernelApp(IPKernelApp):  # type: ignore[misc]
        def init_sockets(self) -> None:
            super().init_sockets()  # type: ignore[no-untyped-call]
            thread = getattr(self, "shell_channel_thread", None)
            if thread and drop_channel_thread:
                self.shell_channel_thread = _NoShellChannel()  # the thread is never started
                loop = getattr(thread, "io_loop", None)
                if loop is not None:
                    loop.close(all_fds=False)

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    app = TunedKernelApp.instance(config=config)
    if drop_channel_thread:
        app.kernel_class = TunedKernel
    return app


def tune(app: Any) -> list[str]:
    """Apply the per-request levers to an initialized app; returns the names applied."""
    kernel = app.kernel
    shell = kernel.shell
    applied = []
    if "debugpy" in sys.modules and sys.modules["debugpy"] is None:
        del sys.modules["debugpy"]  # importable again by user code
        applied.append("no_debugger")
    if "__getattr__" in vars(sys.modules.get("jupyter_client", sys)):
        applied.append("lazy_jupyter_client")
    if getattr(kernel, "_execute_sleep", 0):
        kernel._execute_sleep = 0.0
        applied.append("execute_sleep")
    if _history_in_memory(shell):
        applied.append("history_in_memory")
    if isinstance(getattr(app, "log", None), logging.Logger) and \
            _drop_unshown_log_records(app.log):
        applied.append("no_unshown_log_records")
    if _quick_should_run_async(shell):
        applied.append("quick_async_check")
    if _skip_empty_flush():
        applied.append("skip_empty_flush")
    if _plain_display_fast_path(shell):
        applied.append("plain_display")
    if _cache_signatures():
        applied.append("cached_signatures")
    if getattr(getattr(app, "iopub_thread", None), "direct_capable", False):  # kernel_iopub.py
        applied.append("direct_iopub")
    if isinstance(getattr(app, "shell_channel_thread", None), _NoShellChannel):
        applied.append("no_shell_channel_thread")
    kernel._exec_gateway_tuning = tuple(applied)  # what tests/test_kernel_tuning.py checks
    return applied


def _history_in_memory(shell: Any) -> bool:
    """In-memory history (set by ``make_app``) has no saving thread, so nothing would move the
    cells' cache into the database that ``%history -g``/``-l``, ``%rerun`` etc. query: the
    cache is written out before any query reads the database (every read goes through
    ``_run_sql``), and every ``WRITE_EVERY`` cells so it stays small."""
    history = shell.history_manager
    if history is None or history.hist_file != ":memory:" or not history.enabled \
            or not callable(getattr(history, "_run_sql", None)):
        return False
    run_sql = history._run_sql

    def write_out() -> None:
        if history.db_input_cache or history.db_output_cache:
            history.writeout_cache()

    def _run_sql(*args: Any, **kwargs: Any) -> Any:
        write_out()
        return run_sql(*args, **kwargs)

    def after_cell(*_: Any) -> None:
        if len(history.db_input_cache) >= _HISTORY_WRITE_EVERY:
            write_out()

    history._run_sql = _run_sql
    shell.events.register("post_execute", after_cell)
    return True


def _drop_unshown_log_records(logger: logging.Logger) -> bool:
    """The kernel's logger is at DEBUG while its only handler shows WARNING and up: ipykernel
    builds several DEBUG records per message that nothing shows. The logger's level is raised
    to the lowest level any handler it reaches shows (so what is shown does not change)."""
    levels: list[int] = []
    current: logging.Logger | None = logger
    while current is not None:
        levels.extend(handler.level for handler in current.handlers)
        if not current.propagate:
            break
        current = current.parent
    floor = min(levels) if levels else logging.WARNING  # logging.lastResort's level
    if logger.getEffectiveLevel() >= floor:
        return False
    logger.setLevel(floor)
    return True


def _quick_should_run_async(shell: Any) -> bool:
    original = getattr(shell, "should_run_async", None)
    if original is None:
        return False

    def should_run_async(raw_cell: str, *, transformed_cell: str | None = None,
                         preprocessing_exc_tuple: Any = None) -> bool:
        text = transformed_cell if transformed_cell is not None else raw_cell
        if isinstance(text, str) and "await" not in text and "async" not in text:
            return False  # no top-level await/async for/async with possible
        return bool(original(raw_cell, transformed_cell=transformed_cell,
                             preprocessing_exc_tuple=preprocessing_exc_tuple))

    shell.should_run_async = should_run_async
    return True


def _skip_empty_flush() -> bool:
    from ipykernel.iostream import OutStream

    original = OutStream.flush
    if getattr(original, "_exec_gateway_tuned", False):
        return True
    # the state this check reads must be what OutStream keeps (ipykernel 6.29 and 7 do)
    kept = OutStream.__init__.__code__.co_names
    if not all(name in kept for name in ("_buffers", "_flush_pending",
                                         "_subprocess_flush_pending", "echo")):
        return False

    def flush(self: Any) -> None:
        try:
            idle = (not self._buffers and not self._flush_pending
                    and not self._subprocess_flush_pending and self.echo is None)
        except AttributeError:  # a subclass that keeps its state elsewhere: stock behaviour
            idle = False
        if not idle:
            original(self)  # type: ignore[no-untyped-call]

    flush._exec_gateway_tuned = True  # type: ignore[attr-defined]
    flush.__doc__ = original.__doc__
    OutStream.flush = flush  # type: ignore[method-assign]
    return True


def _plain_display_fast_path(shell: Any) -> bool:
    formatter = getattr(shell, "display_formatter", None)
    if formatter is None or not hasattr(formatter, "formatters"):
        return False
    original = formatter.format
    extra = [formatter.ipython_display_formatter, formatter.mimebundle_formatter]

    def registered(typ: type) -> bool:
        """A printer is registered for ``typ`` or a base of it by a formatter other than
        text/plain (or text/plain is not the usual one)."""
        others = [f for mime, f in formatter.formatters.items() if mime != "text/plain"]
        for f in [*others, *extra]:
            if not f.type_printers and not f.deferred_printers:
                continue
            for base in typ.__mro__:
                if base in f.type_printers or (base.__module__, base.__name__) in \
                        f.deferred_printers:
                    return True
        return False

    def format(obj: Any, include: Any = None, exclude: Any = None) -> Any:
        typ = type(obj)
        plain = formatter.formatters.get("text/plain")
        if typ in _PLAIN_TYPES and include is None and exclude is None and plain is not None \
                and not registered(typ):
            data = plain(obj)
            return ({"text/plain": data} if data is not None else {}), {}
        return original(obj, include=include, exclude=exclude)

    formatter.format = format
    return True


def _cache_signatures() -> bool:
    """ipykernel's ``_accepts_parameters(meth, names)`` (an ``inspect.signature``), cached per
    underlying function."""
    from ipykernel import ipkernel, kernelbase

    original = getattr(kernelbase, "_accepts_parameters", None)
    if original is None or getattr(original, "_exec_gateway_tuned", False):
        return original is not None

    @functools.lru_cache(maxsize=64)
    def cached(func: Any, names: tuple[str, ...]) -> dict[str, bool]:
        return dict(original(func, list(names)))

    def accepts(meth: Any, param_names: list[str]) -> dict[str, bool]:
        func = getattr(meth, "__func__", meth)
        try:
            hash(func)
        except TypeError:
            return dict(original(meth, param_names))
        return dict(cached(func, tuple(param_names)))

    accepts._exec_gateway_tuned = True  # type: ignore[attr-defined]
    for module in (kernelbase, ipkernel):  # ipkernel imported the name
        if getattr(module, "_accepts_parameters", None) is original:
            module._accepts_parameters = accepts  # type: ignore[attr-defined]
    return True
