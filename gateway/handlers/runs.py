"""REST: one-shot runs (POST /v1/run) and a session's background runs (GET/DELETE
/v1/sessions/{id}/runs/{run_id}). Each handler parses, makes one manager call, answers."""

from __future__ import annotations

from gateway import errors
from gateway.handlers.base import ApiHandler, forwardable
from gateway.models import RunRequest
from gateway.sessions import Session


class OneShotHandler(ApiHandler):
    async def post(self) -> None:
        req = self.body(RunRequest)
        self.send(await self.services.manager.oneshots.run(self.owner, req))


class RunHandler(ApiHandler):
    @forwardable
    async def get(self, session: Session, run_id: str) -> None:
        raw = self.get_query_argument("wait_s", "0")
        try:
            wait_s = float(raw)
        except ValueError:
            raise errors.ValidationFailed("wait_s must be a number of seconds") from None
        self.send(await self.services.manager.runs.get(session, run_id, wait_s))

    @forwardable
    async def delete(self, session: Session, run_id: str) -> None:
        await self.services.manager.runs.cancel(session, run_id)
        self.no_content()
