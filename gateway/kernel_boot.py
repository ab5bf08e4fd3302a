"""Kernel entry point: ipykernel whose iopub socket never drops output.

ipykernel's PUB socket keeps ZeroMQ's default send high-water mark (1000 messages) and
silently drops output beyond it when the reader falls behind (measured: thousands of lines
lost from a tight print loop under load). Here the kernel's PUB sockets queue without limit
instead: the backlog lives in the kernel's own memory, which its sandbox limits, while the
gateway's receiving side stays bounded. Stand-alone on purpose (no gateway imports): the
Docker kernel image runs this same file.

Usage: python kernel_boot.py -f connection.json [ipykernel options]
"""

import zmq

_socket = zmq.Context.socket


def _socket_without_drops(self, socket_type, *args, **kwargs):  # type: ignore[no-untyped-def]
    sock = _socket(self, socket_type, *args, **kwargs)
    if socket_type in (zmq.PUB, zmq.XPUB):
        sock.setsockopt(zmq.SNDHWM, 0)
    return sock


zmq.Context.socket = _socket_without_drops  # type: ignore[method-assign]

if __name__ == "__main__":
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()
