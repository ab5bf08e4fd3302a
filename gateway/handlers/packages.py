"""REST: a session's packages — install (POST, 202 + a job), list (GET), a job's status.
Each handler parses, makes one manager call, answers."""

from __future__ import annotations

from gateway.handlers.base import ApiHandler, forwardable
from gateway.models import PackagesRequest
from gateway.sessions import Session


class PackagesHandler(ApiHandler):
    @forwardable
    async def get(self, session: Session) -> None:
        self.send(await self.services.manager.packages.installed(session))

    @forwardable
    async def post(self, session: Session) -> None:
        accepted = self.services.manager.packages.submit(session, self.body(PackagesRequest))
        self.set_header("Location", accepted.status_url)
        self.send(accepted, 202)


class PackageJobHandler(ApiHandler):
    @forwardable
    async def get(self, session: Session, job_id: str) -> None:
        self.send(self.services.manager.packages.job(session, job_id))
