"""The kernel image's Python environment on a read-only named volume
(gateway/launchers/envvolume.py): filled once by the engine from the image, mounted read-only
at the same path in every kernel container, off when ``docker_env_volume`` is false, and
cleaned up when its image is gone."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from docker.types import Mount

from gateway.launchers import envvolume
from tests.conftest import DOCKER_IMAGE, Gateway, docker_instance_id, wait_until

pytestmark = pytest.mark.docker

READY_WAIT_S = 300.0  # the first fill copies ~550 MB inside the engine


def env_volume_state(gw: Gateway) -> str:
    return str(gw.http.get("/healthz").json()["launcher_details"]["env_volume"])


def image_volume(client: Any) -> str:
    return envvolume.volume_name(client.images.get(DOCKER_IMAGE).id)


def kernel_view(gw: Gateway, sid: str) -> Any:
    import json

    result = gw.execute(sid, "import json, os, socket, sys\n"
                             "def attempt(p):\n"
                             "    try:\n"
                             "        open(p, 'w').close()\n"
                             "    except OSError as e:\n"
                             "        return e.errno\n"
                             "print(json.dumps([socket.gethostname(), sys.base_prefix,"
                             " os.__file__, attempt('/opt/kernel/x'),"
                             " attempt('/opt/kernel/base/lib/python3.11/os.py')]))")
    assert result["status"] == "ok", result
    return json.loads(result["stdout"])


def test_kernels_read_the_environment_from_a_read_only_volume(
    gateway_factory: Any, docker_client: Any
) -> None:
    gw = gateway_factory(launcher="docker", instance_id=docker_instance_id("envvol"),
                         pool_size=0)
    name = image_volume(docker_client)
    # /healthz says so once this gateway mounts it (filling before: kernels read the image)
    wait_until(lambda: env_volume_state(gw) == "ready", READY_WAIT_S, 0.5)
    assert any(v.name == name + envvolume.READY_SUFFIX for v in docker_client.volumes.list())
    volume = docker_client.volumes.get(name)
    assert volume.attrs["Labels"][envvolume.LABEL_IMAGE_ID] == \
        docker_client.images.get(DOCKER_IMAGE).id
    sid = f"env-{secrets.token_hex(3)}"
    host, base_prefix, os_file, errno_new, errno_existing = kernel_view(gw, sid)
    container = docker_client.containers.get(host)
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    env = mounts["/opt/kernel"]
    assert env["Type"] == "volume" and env["Name"] == name and env["RW"] is False
    assert base_prefix == "/opt/kernel/base" and os_file.startswith("/opt/kernel/base/")
    assert errno_new == errno_existing == 30  # EROFS: the kernel cannot change its libraries
    assert gw.execute(sid, "1+1")["outputs"][0]["data"]["text/plain"] == "2"


def test_setting_off_runs_the_images_own_files(gateway_factory: Any, docker_client: Any
                                               ) -> None:
    gw = gateway_factory(launcher="docker", instance_id=docker_instance_id("noenv"),
                         pool_size=0, docker_env_volume="false")
    assert env_volume_state(gw) == "off"
    host, base_prefix, _, errno_new, _ = kernel_view(gw, f"noenv-{secrets.token_hex(3)}")
    container = docker_client.containers.get(host)
    assert "/opt/kernel" not in {m["Destination"] for m in container.attrs["Mounts"]}
    assert base_prefix == "/opt/kernel/base" and errno_new == 30  # the read-only root fs


def test_volumes_of_images_that_are_gone_are_removed(docker_client: Any) -> None:
    gone = "sha256:" + secrets.token_hex(6) + "0" * 52
    labels = {envvolume.LABEL_MANAGED: "true", envvolume.LABEL_IMAGE_ID: gone}
    stale = docker_client.volumes.create(envvolume.volume_name(gone), labels=labels)
    ready = docker_client.volumes.create(envvolume.volume_name(gone) + envvolume.READY_SUFFIX,
                                         labels=labels)
    current = image_volume(docker_client)
    try:
        removed = envvolume.remove_stale(docker_client)
        assert {stale.name, ready.name} <= set(removed)
        assert current not in removed
        names = {v.name for v in docker_client.volumes.list()}
        assert stale.name not in names and ready.name not in names
    finally:
        for volume in (stale, ready):
            try:
                volume.remove(force=True)
            except Exception:
                pass


def test_an_interrupted_copy_is_thrown_away_and_redone(docker_client: Any) -> None:
    """A volume left half-filled (no ready marker, its copying container left behind) is
    emptied and filled again; a filler container of another gateway makes this one wait
    instead."""
    api = docker_client.api
    image_id = docker_client.images.get(DOCKER_IMAGE).id
    name = f"exec-gateway-env-test{secrets.token_hex(3)}"
    labels = {envvolume.LABEL_MANAGED: "true", envvolume.LABEL_IMAGE_ID: image_id}
    docker_client.volumes.create(name, labels=labels)
    try:  # a leftover file of the interrupted copy, written by a throwaway container
        docker_client.containers.run(
            image_id, ["-c", "touch /opt/kernel/leftover"], entrypoint="/bin/sh", user="0",
            network_mode="none", remove=True,
            mounts=[Mount(target="/opt/kernel", source=name, type="volume",
                                    no_copy=True)])
        # the copying container of a gateway stopped mid-copy (never started) holds it
        copier = api.create_container(
            image_id, entrypoint=["/bin/true"], labels=labels, network_disabled=True,
            host_config=api.create_host_config(network_mode="none", mounts=[
                Mount(target="/opt/kernel", source=name, type="volume", no_copy=True)]))
        other = api.create_container(image_id, name=f"{name}-fill", entrypoint=["/bin/true"],
                                     labels=labels)
        assert envvolume._fill(api, image_id, name, "/opt/kernel") is False  # it waits
        api.remove_container(other["Id"], force=True)
        assert envvolume._fill(api, image_id, name, "/opt/kernel") is True
        listing = docker_client.containers.run(
            image_id, ["-c", "ls /opt/kernel; /opt/kernel/bin/python -c 'print(6 * 7)'"],
            entrypoint="/bin/sh", network_mode="none", remove=True,
            mounts=[Mount(target="/opt/kernel", source=name, type="volume",
                                    read_only=True, no_copy=True)]).decode()
        assert "leftover" not in listing and "base" in listing and listing.endswith("42\n")
        assert docker_client.volumes.get(name + envvolume.READY_SUFFIX)
        assert not docker_client.api.containers(all=True, filters={"name": f"{name}-fill"})
        assert not docker_client.api.containers(all=True, filters={"id": copier["Id"]})
    finally:
        for volume in (name, name + envvolume.READY_SUFFIX):
            try:
                docker_client.volumes.get(volume).remove(force=True)
            except Exception:
                pass


def test_a_gateway_stopping_mid_copy_leaves_no_filler_behind(docker_client: Any) -> None:
    """The launcher's close removes the filler of a copy it has not finished, so the next
    gateway fills the volume at once instead of waiting ``STALE_FILLER_S`` for it."""
    import threading

    api = docker_client.api
    image_id = docker_client.images.get(DOCKER_IMAGE).id
    name = f"exec-gateway-env-test{secrets.token_hex(3)}"
    volumes = envvolume.EnvVolume(DOCKER_IMAGE, enabled=True)
    copying = threading.Thread(target=envvolume._fill, daemon=True, kwargs=dict(
        api=api, image_id=image_id, name=name, path="/opt/kernel",
        on_filler=volumes._fillers.add))
    filler = {"name": f"{name}-fill"}
    try:
        copying.start()
        wait_until(lambda: docker_client.api.containers(all=True, filters=filler), 30, 0.05)
        volumes.close(docker_client)  # (the copy is still running)
        assert not docker_client.api.containers(all=True, filters=filler)
        copying.join(120)
        assert envvolume._fill(api, image_id, name, "/opt/kernel") is True  # no wait
        assert docker_client.volumes.get(name + envvolume.READY_SUFFIX)
        assert not docker_client.api.containers(all=True, filters=filler)
    finally:
        copying.join(120)
        for volume in (name, name + envvolume.READY_SUFFIX):
            try:
                docker_client.volumes.get(volume).remove(force=True)
            except Exception:
                pass


def test_a_rebuilt_image_never_gets_the_old_images_volume(
    gateway_factory: Any, docker_client: Any
) -> None:
    """The tag a gateway runs moves to another image (a rebuild): new kernels run that image
    without the old image's environment volume (here the new image names no env path)."""
    import io

    tag = f"exec-gateway-kernel:envtest-{secrets.token_hex(3)}"
    docker_client.images.get(DOCKER_IMAGE).tag(tag)
    rebuilt = None
    try:
        gw = gateway_factory(launcher="docker", instance_id=docker_instance_id("retag"),
                             pool_size=0, docker_image=tag)
        name = image_volume(docker_client)
        wait_until(lambda: any(v.name == name + envvolume.READY_SUFFIX
                               for v in docker_client.volumes.list()), READY_WAIT_S, 0.5)
        sessions = [f"a-{secrets.token_hex(3)}", f"b-{secrets.token_hex(3)}"]
        before = kernel_view(gw, sessions[0])[0]
        mounts = {m["Destination"] for m in docker_client.containers.get(before).attrs["Mounts"]}
        assert "/opt/kernel" in mounts
        dockerfile = f"FROM {DOCKER_IMAGE}\nLABEL {envvolume.LABEL_ENV_PATH}=\"\"\n".encode()
        rebuilt, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag,
                                                network_mode="none", rm=True)
        after = kernel_view(gw, sessions[1])[0]
        container = docker_client.containers.get(after)
        assert container.attrs["Image"] == rebuilt.id
        assert "/opt/kernel" not in {m["Destination"] for m in container.attrs["Mounts"]}
        for session in sessions:  # their containers go, so the test's image can go too
            gw.http.delete(f"/v1/sessions/{session}")
    finally:
        for image in (tag, *([rebuilt.id] if rebuilt is not None else [])):
            try:
                docker_client.images.remove(image, force=True)
            except Exception:
                pass
