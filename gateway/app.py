"""The only wiring code: build the services from settings, the route table, the server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tornado import web

from gateway.access import log_access
from gateway.auth import Auth
from gateway.handlers import files, jupyter, link, meta, packages, rest, runs, ws
from gateway.handlers.base import NotFoundHandler, Services
from gateway.launchers import make_launcher
from gateway.metrics import Metrics
from gateway.registry import make_registry
from gateway.replica_link.client import ReplicaLinks
from gateway.replica_link.served import ServedLinks
from gateway.sessions import SessionManager
from gateway.settings import Settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
SID = r"(?P<session_id>[^/]+)"
KID = r"(?P<kernel_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"


def build_services(settings: Settings) -> Services:
    """Raises KeysFileError before anything else is set up."""
    auth = Auth.from_settings(settings)
    metrics = Metrics()
    launcher = make_launcher(settings)
    registry = make_registry(settings)
    return Services(
        settings=settings,
        auth=auth,
        manager=SessionManager(settings, launcher, registry, metrics),
        launcher=launcher,
        registry=registry,
        metrics=metrics,
        replicas=ReplicaLinks(),
        links=ServedLinks(4 * settings.max_request_bytes + 64 * 1024, metrics.replica_links),
    )


def make_app(services: Services) -> web.Application:
    deps: dict[str, Any] = {"services": services}
    routes: list[Any] = [
        (r"/v1/sessions", rest.SessionsHandler, deps),
        (rf"/v1/sessions/{SID}", rest.SessionHandler, deps),
        (rf"/v1/sessions/{SID}/execute", rest.ExecuteHandler, deps),
        (rf"/v1/sessions/{SID}/interrupt", rest.InterruptHandler, deps),
        (rf"/v1/sessions/{SID}/restart", rest.RestartHandler, deps),
        (rf"/v1/sessions/{SID}/hibernate", rest.HibernateHandler, deps),
        (rf"/v1/sessions/{SID}/ws", ws.SessionSocket, deps),
        (rf"/v1/sessions/{SID}/files", files.FilesHandler, deps),
        (rf"/v1/sessions/{SID}/files/(?P<path>.+)", files.FileHandler, deps),
        (rf"/v1/sessions/{SID}/runs/(?P<run_id>[A-Za-z0-9_-]{{1,64}})", runs.RunHandler, deps),
        (rf"/v1/sessions/{SID}/packages", packages.PackagesHandler, deps),
        (rf"/v1/sessions/{SID}/packages/jobs/(?P<job_id>[0-9a-f]{{1,64}})",
         packages.PackageJobHandler, deps),
        (r"/v1/run", runs.OneShotHandler, deps),
        (r"/v1/replica-link", link.ReplicaLinkHandler, deps),
        (r"/v1/openapi.json", meta.OpenAPIHandler,
         {**deps, "document": meta.openapi_document(services)}),
        (r"/api/?", jupyter.ApiRootHandler, deps),
        (r"/api/kernelspecs/?", jupyter.KernelSpecsHandler, deps),
        (r"/api/kernelspecs/(?P<name>[^/]+)/?", jupyter.KernelSpecHandler, deps),
        (r"/api/kernels/?", jupyter.KernelsHandler, deps),
        (rf"/api/kernels/{KID}/?", jupyter.KernelHandler, deps),
        (rf"/api/kernels/{KID}/(?P<action>interrupt|restart)/?", jupyter.KernelActionHandler,
         deps),
        (rf"/api/kernels/{KID}/channels", jupyter.ChannelsHandler, deps),
        (r"/healthz", meta.HealthHandler, deps),
        (r"/readyz", meta.ReadyHandler, deps),
        (r"/metrics", meta.MetricsHandler, deps),
        (r"/", meta.PageHandler),
        (r"/docs/?", meta.DocsHandler),
        (r"/docs/static/(swagger-ui-bundle\.js|swagger-ui\.css|favicon-32x32\.png)",
         web.StaticFileHandler, {"path": str(meta.swagger_ui_dir())}),
    ]
    app = web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        static_path=str(STATIC_DIR),
        compress_response=False,
        websocket_max_message_size=services.settings.ws_max_message_bytes,
        websocket_ping_interval=services.settings.ws_ping_interval_s or None,
        websocket_ping_timeout=services.settings.ws_ping_interval_s or None,
        log_function=log_request,
    )
    services.links.app = app  # calls that come over replica links are routed by it too
    return app


def log_request(handler: web.RequestHandler) -> None:
    """Access log without the query string: browsers and Jupyter clients put tokens there."""
    log_access(handler.get_status(), handler.request.method, handler.request.path,
               handler.request.request_time())
