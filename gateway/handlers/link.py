"""``GET /v1/replica-link``: another replica opens the link it forwards REST calls on (see
``gateway.replica_link``). Any valid key opens it; every call on it is authenticated again."""

from __future__ import annotations

from gateway import errors
from gateway.handlers.base import ApiHandler
from gateway.replica_link import frames


class ReplicaLinkHandler(ApiHandler):
    async def get(self) -> None:
        if self.request.headers.get("Upgrade", "").lower() != frames.PROTOCOL:
            raise errors.BadRequest(f"this endpoint is for gateway replicas "
                                    f"(Upgrade: {frames.PROTOCOL})")
        links = self.services.links
        if not links.room():
            raise errors.ShuttingDown("this replica takes no more replica links now")
        self.set_status(101)
        self.clear_header("Content-Type")
        self.set_header("Upgrade", frames.PROTOCOL)
        self.set_header("Connection", "Upgrade")
        flushed = self.finish()
        stream = self.detach()
        await flushed
        await links.adopt(stream, self.request.remote_ip or "")
