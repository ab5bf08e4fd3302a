"""exec-gateway / python -m gateway: Settings → services → app → serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys
from pathlib import Path

import pydantic
from tornado import netutil

from gateway import __version__
from gateway.app import build_services, make_app
from gateway.auth import KeysFileError
from gateway.replica_link.front import Front
from gateway.server import connection_limit, make_server
from gateway.settings import Settings, describe_error

log = logging.getLogger("gateway")


def raise_fd_limit(most: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one (up to ``most``): every connection
    and every kernel socket is a descriptor. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = most if hard == resource.RLIM_INFINITY else min(hard, most)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the file descriptor limit from %d: %s", soft, exc)
    return most if soft == resource.RLIM_INFINITY else soft


async def serve(settings: Settings, max_connections: int) -> None:
    services = build_services(settings)
    await services.manager.start()
    front = Front(make_app(services), services)
    server = front.server = make_server(front, settings, max_connections)
    sockets = netutil.bind_sockets(
        settings.port, settings.host
    )
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    url = settings.public_url or f"http://{host}:{port}/"
    # The start-up banner goes to the terminal, not the log: it may hold a generated token.
    print(f"exec-gateway {__version__} serving on {url} (launcher={settings.launcher}, "
          f"registry={services.registry.name})", flush=True)
    if services.auth.generated:
        print(f"token: {services.auth.generated}\n"
              f"  try: curl -H 'Authorization: Bearer {services.auth.generated}' "
              f"-d '{{\"code\": \"1+1\"}}' {url}v1/sessions/demo/execute", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    server.stop()
    services.links.stop()  # calls not yet taken on them go to other replicas
    await services.manager.close()
    services.links.close()
    services.replicas.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exec-gateway", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file (see config/)")
    parser.add_argument("--version", action="version", version=__version__)
    args = parser.parse_args(argv)
    try:
        settings = Settings.load(args.config)
    except pydantic.ValidationError as exc:
        print(f"exec-gateway: invalid settings: {describe_error(exc)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:  # (a TOML syntax error names line, column)
        print(f"exec-gateway: invalid settings: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # that format names no caller, thread or process: not collecting them saves a walk up the
    # stack and three lookups per record (the logging HOWTO's "Optimization"), and every
    # request is logged
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    try:
        max_connections = connection_limit(settings, raise_fd_limit())
    except ValueError as exc:
        print(f"exec-gateway: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings, max_connections))
    except KeysFileError as exc:
        print(f"exec-gateway: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"exec-gateway: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
