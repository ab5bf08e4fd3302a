"""The only wiring code: build the services from settings, the route table, the server."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from tornado import httpserver, iostream, web

from gateway.auth import Auth
from gateway.handlers import meta, rest
from gateway.handlers.base import NotFoundHandler, Services
from gateway.launchers import make_launcher
from gateway.metrics import Metrics
from gateway.registry import make_registry
from gateway.sessions import SessionManager
from gateway.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"
SID = r"(?P<session_id>[^/]+)"


def build_services(settings: Settings) -> Services:
    metrics = Metrics()
    launcher = make_launcher(settings)
    registry = make_registry(settings)
    return Services(
        settings=settings,
        auth=Auth.from_settings(settings),
        manager=SessionManager(settings, launcher, registry, metrics),
        launcher=launcher,
        registry=registry,
        metrics=metrics,
    )


def make_app(services: Services) -> web.Application:
    deps: dict[str, Any] = {"services": services}
    routes: list[Any] = [
        (r"/v1/sessions", rest.SessionsHandler, deps),
        (rf"/v1/sessions/{SID}", rest.SessionHandler, deps),
        (rf"/v1/sessions/{SID}/execute", rest.ExecuteHandler, deps),
        (rf"/v1/sessions/{SID}/interrupt", rest.InterruptHandler, deps),
        (rf"/v1/sessions/{SID}/restart", rest.RestartHandler, deps),
        (r"/v1/openapi.json", meta.OpenAPIHandler, deps),
        (r"/healthz", meta.HealthHandler, deps),
        (r"/readyz", meta.ReadyHandler, deps),
        (r"/metrics", meta.MetricsHandler, deps),
    ]
    return web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        static_path=str(STATIC_DIR),
        compress_response=False,
    )


class HTTPServer(httpserver.HTTPServer):
    """Tornado's server with TCP_NODELAY on every connection (Nagle + delayed ACK cost ~40 ms)."""

    def handle_stream(self, stream: iostream.IOStream, address: tuple[Any, ...]) -> None:
        if stream.socket is not None and stream.socket.family in (socket.AF_INET, socket.AF_INET6):
            stream.set_nodelay(True)
        super().handle_stream(stream, address)


def make_server(app: web.Application, settings: Settings) -> HTTPServer:
    # the body limit is enforced per handler (JSON 413); this is the hard ceiling
    return HTTPServer(app, xheaders=False, max_body_size=4 * settings.max_request_bytes,
                      idle_connection_timeout=300)
