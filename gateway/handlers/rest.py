"""REST API v1: sessions and execute. Each handler parses, makes one manager call, answers."""

from __future__ import annotations

from gateway.handlers.base import ApiHandler, forwardable
from gateway.models import CreateSession, ExecuteRequest, SessionList


class SessionsHandler(ApiHandler):
    async def get(self) -> None:
        self.send(SessionList(sessions=await self.services.manager.list(self.owner)))

    async def post(self) -> None:
        req = self.body(CreateSession, empty_ok=True)
        info = await self.services.manager.create(self.owner, req)
        self.set_header("Location", f"/v1/sessions/{info.id}")
        self.send(info, 201)


class SessionHandler(ApiHandler):
    @forwardable
    async def get(self, session_id: str) -> None:
        self.send(await self.services.manager.get(self.owner, session_id))

    @forwardable
    async def delete(self, session_id: str) -> None:
        await self.services.manager.delete(self.owner, session_id)
        self.no_content()


class ExecuteHandler(ApiHandler):
    @forwardable
    async def post(self, session_id: str) -> None:
        req = self.body(ExecuteRequest)
        self.send(await self.services.manager.execute(self.owner, session_id, req))


class InterruptHandler(ApiHandler):
    @forwardable
    async def post(self, session_id: str) -> None:
        await self.services.manager.interrupt(self.owner, session_id)
        self.no_content()


class RestartHandler(ApiHandler):
    @forwardable
    async def post(self, session_id: str) -> None:
        self.send(await self.services.manager.restart(self.owner, session_id))
