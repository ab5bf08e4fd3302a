"""Health, readiness, metrics, OpenAPI and the start page."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from tornado import web

from gateway import __version__, errors
from gateway.handlers.base import ApiHandler, Services
from gateway.models import Capabilities, Health
from gateway.openapi import build_openapi


class HealthHandler(ApiHandler):
    auth_required = False

    def health(self, status: str = "ok", checks: dict[str, str] | None = None) -> Health:
        s = self.services
        return Health(
            status=status,  # type: ignore[arg-type]
            version=__version__,
            launcher=s.launcher.name,
            launcher_details=s.launcher.details(),
            registry=s.registry.name,
            sessions=s.manager.count(),
            max_sessions=s.settings.max_sessions,
            pool_size=len(s.manager.pool),
            default_limits=s.settings.default_limits,
            max_limits=s.settings.max_limits,
            checks=checks or {},
            capabilities=Capabilities(kernel_libraries=s.manager.libraries.known,
                                      kernel_blocked_modules=s.settings.kernel_blocked_modules,
                                      max_tests=s.settings.max_tests),
        )

    async def get(self) -> None:
        self.send(self.health())


class ReadyHandler(HealthHandler):
    auth_required = True

    async def get(self) -> None:
        checks: dict[str, str] = {}
        for name, probe in (("launcher", self.services.launcher.check),
                            ("registry", self.services.registry.ping)):
            try:
                await probe()
                checks[name] = "ok"
            except errors.GatewayError as exc:
                checks[name] = exc.message
        ok = all(v == "ok" for v in checks.values())
        self.send(self.health("ok" if ok else "unavailable", checks), 200 if ok else 503)


class MetricsHandler(ApiHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.services.metrics.render())


class OpenAPIHandler(ApiHandler):
    """The document, built once per app from its settings (see ``openapi_document``)."""

    auth_required = False

    def initialize(self, services: Services, document: bytes) -> None:  # type: ignore[override]
        super().initialize(services)
        self.document = document

    async def get(self) -> None:
        self.finish(self.document)


def openapi_document(services: Services) -> bytes:
    return json.dumps(build_openapi(services.settings)).encode()


# HTML output of cells is shown in sandboxed iframes; nothing else may load from elsewhere.
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "connect-src 'self' ws: wss:; frame-src 'self' blob: data:; object-src 'none'")


class PageHandler(web.RequestHandler):
    """The web IDE page (static/index.html); it asks for the token itself, so no auth here."""

    async def get(self) -> None:
        page = Path(self.settings["static_path"]) / "index.html"
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(page.read_bytes())


def swagger_ui_dir() -> Path:
    """Swagger UI's static files, as the swagger-ui-py package ships them (found without
    importing the package, which would pull in its web-framework glue)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


class DocsHandler(web.RequestHandler):
    """GET /docs: Swagger UI on /v1/openapi.json (static/docs.html), under the page's CSP; it
    asks for the token itself (or takes it from the URL fragment), so no auth here."""

    async def get(self) -> None:
        page = Path(self.settings["static_path"]) / "docs.html"
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(page.read_bytes())
