"""REST API v1: sessions and execute. Each handler parses, makes one manager call, answers."""

from __future__ import annotations

from gateway.handlers.base import ApiHandler, forwardable
from gateway.models import CreateSession, ExecuteRequest, HibernateResult, SessionList
from gateway.sessions import Session


class SessionsHandler(ApiHandler):
    async def get(self) -> None:
        self.send(SessionList(sessions=await self.services.manager.list(self.owner)))

    async def post(self) -> None:
        req = self.body(CreateSession, empty_ok=True)
        info = await self.services.manager.create(self.owner, req)
        self.set_header("Location", f"/v1/sessions/{info.id}")
        self.send(info, 201)


class SessionHandler(ApiHandler):
    async def get(self, session_id: str) -> None:
        """A hibernated session is described from its record (not restored)."""
        asleep = await self.services.manager.hibernation.asleep(self.owner, session_id)
        if asleep is not None:
            self.send(asleep.info())
            return
        await self._get(session_id)

    @forwardable
    async def _get(self, session: Session) -> None:
        self.send(session.info())

    async def delete(self, session_id: str) -> None:
        if not await self.services.manager.delete_hibernated(self.owner, session_id):
            await self._delete(session_id)
        else:
            self.no_content()

    @forwardable
    async def _delete(self, session: Session) -> None:
        await self.services.manager.delete(session)
        self.no_content()


class ExecuteHandler(ApiHandler):
    async def post(self, session_id: str) -> None:
        req = self.body(ExecuteRequest)
        manager = self.services.manager
        manager.cells.check(req)  # a bad request never starts a session

        async def run(session: Session) -> None:
            if req.wait:
                self.send(await manager.cells.execute(session, req))
                return
            accepted = await manager.runs.submit(session, req)
            self.set_header("Location", accepted.status_url)
            self.send(accepted, 202)

        await self.serve_or_forward(session_id, run, open_if_absent=True)


class InterruptHandler(ApiHandler):
    @forwardable
    async def post(self, session: Session) -> None:
        await self.services.manager.cells.interrupt(session)
        self.no_content()


class HibernateHandler(ApiHandler):
    async def post(self, session_id: str) -> None:
        asleep = await self.services.manager.hibernation.asleep(self.owner, session_id)
        if asleep is not None:  # already: nothing to restore just to hibernate it again
            self.send(HibernateResult(
                session_id=session_id, state=asleep.state, generation=asleep.generation,
                snapshot_bytes=asleep.snapshot.bytes if asleep.snapshot else 0, variables=[],
                skipped=[], files=0, packages=0), 202)
            return
        await self._hibernate(session_id)

    @forwardable
    async def _hibernate(self, session: Session) -> None:
        self.send(await self.services.manager.hibernation.hibernate(session), 202)


class RestartHandler(ApiHandler):
    @forwardable
    async def post(self, session: Session) -> None:
        self.send(await self.services.manager.cells.restart(session))
