"""Kernel iopub: messages sent straight onto the iopub socket by the thread that sends them
when the kernel's IOPub thread has nothing queued, instead of each being handed to that thread.

Stock ipykernel sends every iopub message (``busy``, ``execute_input``, the result, ``idle``:
four per ``1+1``) through its IOPub thread: the message is queued, the thread is woken over an
inproc socket, and it sends. Each hand-off is a wake-up and two context switches, about a
fifth of a tuned kernel's CPU per call on 2 cores under load (measured: kernel CPU per call
-11 to -21 %, calls/s at 16 sessions +8 to +26 %, four alternating pairs).

ZeroMQ sockets are not thread-safe, so the socket gets a lock, and the IOPub thread holds it
at all times except while it waits in its event loop's ``select``: every callback it runs
(queued sends, the XPUB subscription listener and its welcome messages, output piped from
forked children) runs with the lock held. Another thread sends directly only if it gets the
lock without waiting (the IOPub thread is then asleep in ``select``) and the queue is empty
(nothing sent earlier is still waiting); otherwise the message is queued as stock does.
Whoever sends, a thread's messages leave in the order it sent them, and ``select`` is never
held up by a sender for longer than one non-blocking ZeroMQ send (the kernel's PUB socket has
no high-water mark: see ``kernel_boot.py``, sends never wait).

Stand-alone on purpose (no gateway imports): the Docker kernel image ships this file next to
``kernel_boot.py``. ``install()`` runs after ``kernel_tuning.make_app()`` (which prepares
ipykernel's imports) and before the app is initialized (the IOPub thread is built then); it
changes nothing where ipykernel lacks the internals it relies on.
"""

from __future__ import annotations

import threading
from typing import Any


def install() -> bool:
    """Make ipykernel's app build a direct-send IOPub thread; False (nothing changed) if the
    installed ipykernel lacks what this relies on."""
    from ipykernel import iostream, kernelapp

    base = getattr(kernelapp, "IOPubThread", None)
    if base is not iostream.IOPubThread or not all(
            hasattr(base, name) for name in ("_thread_main", "_really_send", "send_multipart")):
        return False

    class DirectIOPubThread(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._socket_lock = threading.Lock()
            # the IOPub thread's selector (its select is wrapped), None: stock behaviour
            self._selector = getattr(getattr(self.io_loop, "asyncio_loop", None), "_selector",
                                     None) if hasattr(self, "_events") else None
            self.direct_capable = self._selector is not None
            self.direct_sends = False  # True once the IOPub thread holds the lock

        def _thread_main(self) -> None:
            selector = self._selector
            if selector is None:
                return super()._thread_main()  # type: ignore[no-any-return]
            lock, wait = self._socket_lock, selector.select

            def select(timeout: float | None = None) -> Any:
                lock.release()
                try:
                    return wait(timeout)
                finally:
                    lock.acquire()

            lock.acquire()  # held from here on, but inside select
            selector.select = select
            self.direct_sends = True
            try:
                super()._thread_main()
            finally:
                self.direct_sends = False  # the lock stays held: everyone queues, as stock

        def send_multipart(self, *args: Any, **kwargs: Any) -> None:
            if self.direct_sends and not self._events and self._socket_lock.acquire(False):
                try:
                    if not self._events:  # (checked again: nothing queued may be overtaken)
                        self._really_send(*args, **kwargs)
                        return
                finally:
                    self._socket_lock.release()
            super().send_multipart(*args, **kwargs)

    kernelapp.IOPubThread = DirectIOPubThread  # type: ignore[attr-defined]  # init_iopub builds it
    return True
