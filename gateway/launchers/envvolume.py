"""EnvVolume: the kernel image's Python environment on a read-only named volume, off the
engine's copy-on-write storage.

Where the engine stores images through fuse-overlayfs (rootless engines, some VMs) every file
a kernel opens at start-up, the standard library included, goes through a FUSE daemon of its
own container: imports are ~3x slower than from a plain directory, and each container keeps
its own page cache of the same files. An image that labels a directory
``exec-gateway.env-path`` (ours: ``/opt/kernel``, the interpreter, its standard library and
every package) gets that directory copied ONCE into a named volume by the engine itself (a
container is created, never started, with the empty volume mounted there: the engine fills an
empty volume from the image), and every kernel container then mounts the volume read-only at
the same path. Same files, same paths; the volume is a plain directory of the engine's, shared
(page cache included) by every kernel.

The volume is named after the image id (``exec-gateway-env-<12 hex>``), so a rebuilt image gets
its own. A second, empty volume (``...-ready``) is created once the copy has finished: a copy
interrupted half-way (a killed gateway) is thrown away and redone. Two gateways filling at once
meet on the filler container's name (fixed, unique per image): the second waits for the first
(and takes over when that filler is older than ``STALE_FILLER_S``: its gateway died). A
gateway that stops mid-copy removes its filler on the way out, so the next one starts over at
once instead of waiting that long.
The copy runs in the background after start-up; kernels started meanwhile read the image's own
files (slower, same behaviour). Volumes of images that no longer exist are removed (those in
use by a container are left). ``docker_env_volume=false`` turns all of this off.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
from docker.types import Mount

log = logging.getLogger(__name__)

LABEL_MANAGED = "exec-gateway.managed"
LABEL_ENV_PATH = "exec-gateway.env-path"  # on the image: the directory to put on a volume
LABEL_IMAGE_ID = "exec-gateway.image-id"  # on the volumes: the image they were made from
PREFIX = "exec-gateway-env-"
READY_SUFFIX = "-ready"
FILL_WAIT_S = 600.0  # how long a second gateway waits for another one's copy
STALE_FILLER_S = 180.0  # a filler container older than this belongs to a gateway that died


def volume_name(image_id: str) -> str:
    return PREFIX + image_id.split(":")[-1][:12]


class EnvVolume:
    """The env volumes one launcher uses, by image id: ``mounts(image_id)`` is empty until that
    image's volume is ready (and starts preparing it in the background)."""

    def __init__(self, image: str, enabled: bool) -> None:
        self._image = image  # the tag the launcher runs, prepared as soon as the engine answers
        self._enabled = enabled
        self._ready: dict[str, Mount | None] = {}  # image id → its mount (None: no env path)
        self._preparing: set[str] = set()
        self._lock = threading.Lock()
        self._cleaned = False
        self._fillers: set[str] = set()  # ids of the filler containers this launcher made
        self.state = "off" if not enabled else "pending"  # pending, filling, ready, none, failed

    def start(self, client: docker.DockerClient) -> None:
        """Prepare the volume of the launcher's image in the background (once per image)."""
        if self._enabled:
            self._begin(client, self._image)

    def mounts(self, client: docker.DockerClient, image_id: str) -> list[Mount]:
        """The read-only mount for a container of ``image_id``: none until its volume is ready
        (a rebuilt image under the same tag gets its own volume; kernels read the image's own
        files meanwhile)."""
        if not self._enabled:
            return []
        with self._lock:
            if image_id in self._ready:
                mount = self._ready[image_id]
                return [mount] if mount is not None else []
        self._begin(client, image_id)
        return []

    def _begin(self, client: docker.DockerClient, image: str) -> None:
        with self._lock:
            if image in self._preparing or image in self._ready:
                return
            self._preparing.add(image)
        threading.Thread(target=self._prepare, args=(client, image), name="docker-env-volume",
                         daemon=True).start()

    def _prepare(self, client: docker.DockerClient, image: str) -> None:
        try:
            image_id, mount = prepare(client, image, self._on_fill, self._fillers.add)
        except (docker.errors.DockerException, OSError, TimeoutError) as exc:
            self.state = "failed"
            log.warning("kernel env volume unavailable, kernels read the image's own files: %s",
                        exc)
            with self._lock:
                self._preparing.discard(image)  # tried again at the next launch
            return
        with self._lock:
            self._ready[image_id] = mount
            self._preparing.discard(image)
            clean, self._cleaned = not self._cleaned, True
        self.state = "ready" if mount is not None else "none"
        if clean:
            with contextlib.suppress(docker.errors.DockerException, OSError):
                remove_stale(client)

    def _on_fill(self) -> None:
        self.state = "filling"

    def close(self, client: docker.DockerClient) -> None:
        """Remove the filler of a copy this launcher has not finished (its gateway is stopping:
        the next one fills the volume again at once, not after ``STALE_FILLER_S``)."""
        for filler in list(self._fillers):
            with contextlib.suppress(docker.errors.DockerException):  # (finished: gone)
                client.api.remove_container(filler, force=True)


def prepare(client: docker.DockerClient, image: str, on_fill: Any = None,
            on_filler: Callable[[str], None] | None = None) -> tuple[str, Mount | None]:
    """``image``'s id and the read-only mount of its env volume, filled first if needed
    (blocking; minutes at most); None when the image names no env path. Raises
    DockerException, TimeoutError."""
    api = client.api
    attrs = api.inspect_image(image)
    image_id = str(attrs["Id"])
    path = ((attrs.get("Config") or {}).get("Labels") or {}).get(LABEL_ENV_PATH)
    if not path:
        return image_id, None
    name = volume_name(image_id)
    deadline = time.monotonic() + FILL_WAIT_S
    while not _exists(api, name + READY_SUFFIX):
        if time.monotonic() > deadline:
            raise TimeoutError(f"volume {name} not filled after {FILL_WAIT_S:.0f}s")
        if on_fill is not None:
            on_fill()
        if not _fill(api, image_id, name, path, on_filler):
            time.sleep(1.0)  # another gateway is filling it
    return image_id, Mount(target=path, source=name, type="volume", read_only=True, no_copy=True)


def _exists(api: Any, name: str) -> bool:
    try:
        api.inspect_volume(name)
        return True
    except docker.errors.NotFound:
        return False


def _fill(api: Any, image_id: str, name: str, path: str,
          on_filler: Callable[[str], None] | None = None) -> bool:
    """Copy the image's ``path`` into a fresh volume ``name``; False if another gateway's
    filler holds the name. ``on_filler`` hears the id of the filler container made."""
    filler = f"{name}-fill"
    labels = {LABEL_MANAGED: "true", LABEL_IMAGE_ID: image_id, LABEL_ENV_PATH: path}
    try:
        made = api.create_container(image_id, name=filler, entrypoint=["/bin/true"],
                                    labels=labels, network_disabled=True,
                                    host_config=api.create_host_config(network_mode="none"))
    except docker.errors.APIError as exc:
        if exc.status_code == 409:  # another gateway fills it (or died doing so: see below)
            _remove_stale_filler(api, filler)
            return False
        raise
    if on_filler is not None:
        on_filler(str(made["Id"]))
    try:
        # a half-filled volume from an interrupted copy: start again from an empty one (the
        # copying container of a gateway stopped mid-copy holds it: never started, removed)
        for copier in api.containers(all=True, filters={"volume": name, "status": "created"}):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(copier["Id"], force=True)
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_volume(name, force=True)
        api.create_volume(name, labels=labels)
        started = time.monotonic()
        # creating a container with an empty volume mounted makes the engine copy the image's
        # directory into it (what `docker run -v name:path` does); it is never started
        probe = api.create_container(
            image_id, entrypoint=["/bin/true"], labels=labels, network_disabled=True,
            host_config=api.create_host_config(
                network_mode="none", mounts=[Mount(target=path, source=name, type="volume")]))
        api.remove_container(probe["Id"], force=True)
        api.create_volume(name + READY_SUFFIX, labels=labels)
        log.info("kernel env volume %s filled from the image's %s in %.1fs", name, path,
                 time.monotonic() - started)
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            api.remove_container(filler, force=True)
    return True


def _remove_stale_filler(api: Any, filler: str) -> None:
    """A filler container left by a gateway that died mid-copy (a copy takes ~15 s here)."""
    with contextlib.suppress(docker.errors.DockerException):
        created = api.inspect_container(filler).get("Created", "")
        age = datetime.now(UTC) - datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00")
        if age.total_seconds() > STALE_FILLER_S:
            api.remove_container(filler, force=True)


def remove_stale(client: docker.DockerClient) -> list[str]:
    """Remove the env volumes whose image is gone; those still mounted stay. Returns the names
    removed."""
    api = client.api
    found = (api.volumes(filters={"label": f"{LABEL_MANAGED}=true"}) or {}).get("Volumes") or []
    images = {img["Id"] for img in api.images(all=True)}
    removed = []
    for volume in found:
        image_id = (volume.get("Labels") or {}).get(LABEL_IMAGE_ID)
        if not image_id or image_id in images or not volume["Name"].startswith(PREFIX):
            continue
        try:
            api.remove_volume(volume["Name"])
            removed.append(volume["Name"])
        except docker.errors.APIError:
            continue  # in use by a container
    if removed:
        log.info("removed kernel env volumes of images that are gone: %s", removed)
    return removed
