"""Packages: ``pip install`` into a session whose sandbox has no network (``manager.packages``).

A job (REST ``POST /v1/sessions/{id}/packages``, or ``%pip install`` / ``!pip install`` in a
cell) is checked (``requirements``), queued behind the session's other jobs (``jobs``), its
wheels downloaded by the gateway into the shared cache (``cache``), then installed inside the
session's sandbox, offline, into ``<workspace>/.packages`` (``installer``). Its log goes to the
session's WebSocket watchers (``package_progress``, then ``package_done``) and, for a cell, to
the cell's output: the kernel (gateway/kernel_pip.py) asks over its own stdin channel, so a
kernel can only ever install into its own session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import parse_wheel_filename

from gateway import errors
from gateway.kernel import KernelConnection, Message
from gateway.kernel_pip import PACKAGES, PROMPT
from gateway.launchers import Launcher
from gateway.metrics import Metrics
from gateway.models import (
    PackageInfo,
    PackageJobAccepted,
    PackageJobInfo,
    PackageJobStatus,
    PackageList,
    PackagesRequest,
)
from gateway.packages import requirements
from gateway.packages.cache import PLATFORM_PROBE, Downloader, WheelCache, platform_args
from gateway.packages.installer import Installer, tree_bytes, unpacked_bytes
from gateway.packages.jobs import PackageJob, SessionJobs
from gateway.settings import Settings

if TYPE_CHECKING:  # (gateway.sessions imports this package)
    from gateway.sessions.files import SessionFiles
    from gateway.sessions.session import Session

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_KERNEL_REQUEST = 64 * 1024  # characters of one request from a kernel
STATUS_WAIT_S = 1.0  # a kernel's status request waits this long for something new
_WHEEL_PATH = re.compile(r"(?<!\S)/\S*/(?=[^/\s]+\.whl\b)")  # a wheel's directory
_DIST_INFO = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)\.dist-info$")


class Packages:
    def __init__(self, settings: Settings, launcher: Launcher, metrics: Metrics,
                 files: SessionFiles) -> None:
        self._settings = settings
        self._launcher = launcher
        self._metrics = metrics
        self._files = files
        self._cache = WheelCache(settings.wheel_cache_dir)
        self._downloader = Downloader(settings, self._cache)
        self._installer = Installer(launcher)
        self._sessions: dict[tuple[str, str], tuple[Session, SessionJobs]] = {}
        self._platform: list[str] | None = None
        self._platform_lock = asyncio.Lock()
        self._answers: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ the verbs
    def submit(self, session: Session, req: PackagesRequest) -> PackageJobAccepted:
        """Check and queue an install job. Raises InvalidRequirement, PackageNotAllowed,
        QueueFull, SessionNotFound."""
        parsed = requirements.parse(req.packages, self._settings)
        jobs = self._jobs_of(session)
        job = PackageJob([str(r) for r in parsed])
        jobs.submit(job, lambda j: self._run(session, jobs, j))
        session.touch()
        return PackageJobAccepted(
            job_id=job.id, status=job.status,
            status_url=f"/v1/sessions/{session.id}/packages/jobs/{job.id}")

    def job(self, session: Session, job_id: str) -> PackageJobInfo:
        return self._job(session, job_id).info()

    async def installed(self, session: Session) -> PackageList:
        """What the session's ``.packages`` holds (its ``*.dist-info`` directories)."""
        try:
            listing = await self._files.listing(session, PACKAGES, recursive=False)
        except (errors.FileNotFound, errors.NotADirectory):
            return PackageList(packages=[])
        found = []
        for info in listing.files:
            match = _DIST_INFO.match(info.path.rsplit("/", 1)[-1])
            if info.type == "directory" and match:
                found.append(PackageInfo(name=match["name"].replace("_", "-"),
                                         version=match["version"]))
        return PackageList(packages=sorted(found, key=lambda p: p.name.lower()))

    def cancel(self, session: Session) -> None:
        """The session ends: its jobs stop (called before its kernel and files go)."""
        entry = self._sessions.pop(session.key, None)
        if entry is not None:
            entry[1].cancel()

    async def close(self) -> None:
        for _, jobs in self._sessions.values():
            jobs.cancel()
        for task in list(self._answers):
            task.cancel()

    def _jobs_of(self, session: Session) -> SessionJobs:
        if session.closed:
            raise errors.SessionNotFound(f"session {session.id!r} was deleted")
        for key, (owner, old) in list(self._sessions.items()):  # sessions reaped meanwhile
            if owner.closed or (key == session.key and owner is not session):
                old.cancel()
                del self._sessions[key]
        return self._sessions.setdefault(session.key, (session, SessionJobs()))[1]

    def _job(self, session: Session, job_id: str) -> PackageJob:
        entry = self._sessions.get(session.key)
        job = entry[1].jobs.get(job_id) if entry is not None and entry[0] is session else None
        if job is None:
            raise errors.JobNotFound(f"no package job {job_id!r} in this session")
        return job

    # ------------------------------------------------------------------ a job's run
    async def _run(self, session: Session, jobs: SessionJobs, job: PackageJob) -> None:
        timeout_s = self._settings.package_job_timeout_s
        try:
            async with jobs.turn:
                job.set_status(PackageJobStatus.running)
                async with asyncio.timeout(timeout_s):
                    await self._work(session, job, time.monotonic() + timeout_s)
        except TimeoutError:
            job.error = f"timed out after {timeout_s:.0f} s (package_job_timeout_s)"
        except asyncio.CancelledError:
            job.error = "cancelled: the session ended"
            self._finish(session, job)
            raise
        except errors.GatewayError as exc:
            job.error = exc.message
        except Exception:
            log.exception("package job failed session_id=%s job_id=%s", session.id, job.id)
            job.error = "internal error while installing"
        self._finish(session, job)

    def _finish(self, session: Session, job: PackageJob) -> None:
        job.set_status(PackageJobStatus.failed if job.error else PackageJobStatus.succeeded)
        if job.error:
            job.log(f"ERROR: {job.error}")
        self._metrics.package_jobs.labels(job.status.value).inc()
        session.events.publish({
            "type": "package_done", "job_id": job.id, "status": job.status.value,
            "installed": [p.model_dump() for p in job.installed], "error": job.error})
        log.info("package job ended session_id=%s job_id=%s status=%s", session.id, job.id,
                 job.status.value)

    async def _work(self, session: Session, job: PackageJob, deadline: float) -> None:
        def progress(line: str) -> None:
            if line.startswith("Looking in"):
                return  # the operator's and the gateway's paths are nobody else's business
            line = _WHEEL_PATH.sub("", line[:1000])
            job.log(line)
            session.events.publish({"type": "package_progress", "job_id": job.id,
                                    "line": line})

        progress(f"Installing {' '.join(job.requirements)}")
        await asyncio.to_thread(self._cache.prepare)
        platform = await self._platform_args()
        dest = self._cache.root / "tmp" / f"{job.id}-{secrets.token_hex(4)}"
        await asyncio.to_thread(dest.mkdir, 0o700, True, False)
        try:
            got = await self._downloader.download(job.requirements, dest, platform, progress)
        finally:
            await asyncio.to_thread(_remove, dest)
        self._metrics.package_download_bytes.inc(got.new_bytes)
        self._metrics.package_cache_hits.inc(got.hits)
        self._metrics.package_cache_misses.inc(len(got.wheels) - got.hits)
        if got.error:
            raise errors.BadRequest(got.error)
        for wheel in got.wheels:  # dependencies too: the operator's lists apply to all
            try:
                requirements.check_allowed(str(parse_wheel_filename(wheel.name)[0]),
                                           self._settings)
            except errors.PackageNotAllowed as exc:
                raise errors.BadRequest(f"a dependency is refused: {exc.message}") from None
        progress(f"{len(got.wheels)} wheels ready ({got.hits} from the cache)")
        await self._check_room(session, got.wheels)
        handle = session.slot.handle
        if handle is None or not session.slot.live or not session.workspace:
            raise errors.BadRequest("the session has no running kernel to install with")
        pip_zip = await asyncio.to_thread(self._cache.pip_zip)
        outcome = await self._installer.install(
            handle, session.limits, job.requirements, got.wheels, pip_zip,
            max(1.0, deadline - time.monotonic()), progress)
        if outcome.error:
            raise errors.BadRequest(outcome.error)
        job.installed = outcome.installed

    async def _check_room(self, session: Session, wheels: list[Path]) -> None:
        """Refuse before installing what cannot fit: the per-session cap (``package_max_mb``,
        less what ``.packages`` holds) and the room left in the workspace (``disk_mb``)."""
        need = await asyncio.to_thread(unpacked_bytes, wheels)
        held = await asyncio.to_thread(tree_bytes, f"{session.workspace}/{PACKAGES}")
        cap = self._settings.package_max_mb * MIB - held
        room = await self._files.room_for(session)
        free = cap if room is None else min(cap, room)
        if need > free:
            why = ("package_max_mb" if room is None or cap <= room else
                   f"disk_mb={session.limits.disk_mb}")
            self._files.quota_hit()
            raise errors.BadRequest(
                f"over quota: the packages take {need / MIB:.1f} MiB unpacked, the session "
                f"has {max(free, 0) / MIB:.1f} MiB left for them ({why}); nothing was installed")

    async def _platform_args(self) -> list[str]:
        """pip's platform options for the kernels' interpreter (asked once)."""
        async with self._platform_lock:
            if self._platform is None:
                try:
                    probe = await self._launcher.libraries(PLATFORM_PROBE)
                except errors.LauncherUnavailable as exc:
                    log.warning("cannot learn the kernels' platform (%s): pip downloads for "
                                "the gateway's own", exc.message)
                    probe = {}
                self._platform = platform_args(probe)
            return self._platform

    # ------------------------------------------------------------------ from the kernel
    def kernel_request(self, session: Session, conn: KernelConnection, msg: Message) -> bool:
        """An input_request from ``session``'s own kernel: if it is a package request
        (kernel_pip.py), answer it and return True; otherwise False (an ordinary input())."""
        prompt = msg["content"].get("prompt")
        if not isinstance(prompt, str) or not prompt.startswith(PROMPT):
            return False
        task = asyncio.create_task(self._answer(session, conn, msg, prompt[len(PROMPT):]))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)
        return True

    @staticmethod
    def refuse_request(session: Session, conn: KernelConnection, msg: Message) -> bool:
        """The stdin hook of one-shot sandboxes: a package request is refused (it must not
        take one of the run's stdin lines either)."""
        prompt = msg["content"].get("prompt")
        if not isinstance(prompt, str) or not prompt.startswith(PROMPT):
            return False
        with contextlib.suppress(Exception):
            conn.reply_input(json.dumps({"error": "a one-shot run cannot install packages: "
                                         "install them into a session"}), msg)
        return True

    async def _answer(self, session: Session, conn: KernelConnection, msg: Message,
                      raw: str) -> None:
        answer: dict[str, Any]
        try:
            request = json.loads(raw) if len(raw) <= MAX_KERNEL_REQUEST else None
            if not isinstance(request, dict):
                raise errors.BadRequest("malformed package request")
            answer = await self._kernel_op(session, request)
        except errors.GatewayError as exc:
            answer = {"error": exc.message}
        except ValueError:
            answer = {"error": "malformed package request"}
        with contextlib.suppress(Exception):  # the kernel may be gone meanwhile
            conn.reply_input(json.dumps(answer), msg)

    async def _kernel_op(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("op") == "install":
            packages = request.get("packages")
            if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
                raise errors.BadRequest("malformed package request")
            accepted = self.submit(session, PackagesRequest(packages=packages))
            return {"job_id": accepted.job_id}
        if request.get("op") == "status":
            since = request.get("since")
            job = self._job(session, str(request.get("job_id")))
            since = since if isinstance(since, int) and since >= 0 else 0
            await job.changed(since, STATUS_WAIT_S)
            lines, cursor = job.lines_since(since)
            return {"status": job.status.value, "lines": lines, "next": cursor,
                    "installed": [p.model_dump() for p in job.installed], "error": job.error}
        raise errors.BadRequest("unknown package request")


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
