"""Kernel entry point: a tuned ipykernel whose iopub socket never drops output, with the
operator's module policy.

ipykernel's PUB socket keeps ZeroMQ's default send high-water mark (1000 messages) and
silently drops output beyond it when the reader falls behind (measured: thousands of lines
lost from a tight print loop under load). Here the kernel's PUB sockets queue without limit
instead: the backlog lives in the kernel's own memory, which its sandbox limits, while the
gateway's receiving side stays bounded.

Module policy: the modules named in ``EXEC_GATEWAY_BLOCKED_MODULES`` (comma-separated, from
the gateway's ``kernel_blocked_modules``) cannot be imported once the kernel has started:
every new import of them, from any code, is refused with an ImportError — by an audit hook
(it cannot be removed; it sees ``import`` statements and ``__import__``) and by a finder
first on ``sys.meta_path`` (it sees ``importlib.import_module`` too) — and the ``import``
statement of user code (cells run as ``__main__``) refuses them even when the kernel itself
had already loaded them (``socket``, ``ctypes`` are). This is defense in depth, NOT a
security boundary: code in the kernel can still reach a loaded module through
``sys.modules`` or other objects, and native code can do anything. The sandbox (container,
no network) is the boundary.

The kernel itself is configured by ``kernel_tuning.py`` and ``kernel_iopub.py`` (next to this
file): less work per cell than stock ipykernel, every behaviour users see kept.

Stand-alone on purpose (no gateway imports): the Docker kernel image runs this same file.

Usage: python kernel_boot.py -f connection.json [ipykernel options]
"""

import builtins
import os
import sys

import zmq

BLOCKED_ENV = "EXEC_GATEWAY_BLOCKED_MODULES"

_socket = zmq.Context.socket


def _socket_without_drops(self, socket_type, *args, **kwargs):  # type: ignore[no-untyped-def]
    sock = _socket(self, socket_type, *args, **kwargs)
    if socket_type in (zmq.PUB, zmq.XPUB):
        sock.setsockopt(zmq.SNDHWM, 0)
    return sock


zmq.Context.socket = _socket_without_drops  # type: ignore[method-assign]


def blocked_names(raw: str) -> frozenset[str]:
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


def is_blocked(name: str, blocked: frozenset[str]) -> bool:
    """``name`` or a package it is in is blocked."""
    parts = name.split(".")
    return any(".".join(parts[:i]) in blocked for i in range(1, len(parts) + 1))


def refusal(name: str) -> ImportError:
    return ImportError(f"import of {name!r} is blocked by this gateway's module policy "
                       "(kernel_blocked_modules)", name=name)


def install_policy(blocked: frozenset[str]) -> None:
    """Refuse imports of ``blocked`` modules from now on (see the module docstring)."""

    def audit(event: str, args: tuple[object, ...]) -> None:
        if event == "import" and isinstance(args[0], str) and is_blocked(args[0], blocked):
            raise refusal(args[0])

    class Refuse:  # a meta path finder (importlib.abc's base class costs ~10 ms to import)
        def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
            if is_blocked(fullname, blocked):
                raise refusal(fullname)

    sys.meta_path.insert(0, Refuse())
    sys.addaudithook(audit)
    original = builtins.__import__

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):  # type: ignore[no-untyped-def]
        if level == 0 and globals is not None and globals.get("__name__") == "__main__":
            wanted = [name] + [f"{name}.{item}" for item in fromlist or () if item != "*"]
            for full in wanted:
                if is_blocked(full, blocked):
                    raise refusal(full)
        return original(name, globals, locals, fromlist, level)

    builtins.__import__ = guarded_import


if __name__ == "__main__":
    import kernel_iopub  # type: ignore[import-not-found]  # next to this file (sys.path[0])
    import kernel_tuning  # type: ignore[import-not-found]

    app = kernel_tuning.make_app()
    kernel_iopub.install()  # after make_app (it sets up ipykernel's imports), before initialize
    app.initialize()
    kernel_tuning.tune(app)
    import kernel_pip  # type: ignore[import-not-found]  # (next to this file)

    kernel_pip.register(app.shell)  # %pip / !pip through the gateway, .packages on sys.path
    policy = blocked_names(os.environ.get(BLOCKED_ENV, ""))
    if policy:  # after the kernel's own imports, before any cell
        install_policy(policy)
    app.start()  # type: ignore[no-untyped-call]
