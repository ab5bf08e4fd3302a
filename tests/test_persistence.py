"""Sessions outlive the gateway: Redis registry + Docker launcher, restart re-adoption."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time

import pytest

from tests.conftest import (
    ROOT,
    Gateway,
    containers_of,
    docker_instance_id,
    unavailable,
    wait_until,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def durable(gateway_factory, redis_url: str, docker_client):
    """Start gateways that share one Redis database, one instance id and one runtime dir."""
    instance = docker_instance_id("persist")
    runtime = f"/tmp/egp-{secrets.token_hex(3)}"
    token = secrets.token_urlsafe(24)

    def start() -> Gateway:
        return gateway_factory(launcher="docker", registry_url=redis_url, instance_id=instance,
                               redis_key_prefix=f"{instance}:", runtime_dir=runtime,
                               token=token, pool_size=0)

    yield start
    subprocess.run(["docker", "rm", "-f", *_containers(instance)], capture_output=True)
    shutil.rmtree(runtime, ignore_errors=True)


def _containers(instance: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter",
                          f"label=exec-gateway.gateway={instance}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_variables_survive_a_gateway_restart(durable, how: int) -> None:
    first = durable()
    before = first.execute("keep", "x = 'still here'\nx")
    assert before["status"] == "ok"
    first.stop(how)
    second = durable()
    after = second.execute("keep", "x")
    assert after["status"] == "ok", after
    assert after["outputs"][0]["data"]["text/plain"] == "'still here'"
    assert after["generation"] == before["generation"]
    assert after["state_preserved"] is True


def test_session_whose_container_vanished_reports_dead(durable) -> None:
    first = durable()
    first.execute("gone", "y = 1")
    instance = first.env["GATEWAY_INSTANCE_ID"]
    first.stop(signal.SIGTERM)
    subprocess.run(["docker", "rm", "-f", *_containers(instance)], check=True,
                   capture_output=True)
    second = durable()
    info = second.http.get("/v1/sessions/gone")
    assert info.status_code == 200 and info.json()["state"] == "dead"
    result = second.execute("gone", "'y' in dir()")
    assert result["status"] == "ok"
    assert result["state_preserved"] is False
    assert result["outputs"][0]["data"]["text/plain"] == "False"


def test_orphan_containers_are_removed_at_start(durable) -> None:
    first = durable()
    first.execute("o", "1")
    instance = first.env["GATEWAY_INSTANCE_ID"]
    first.stop(signal.SIGKILL)
    # forget the record: the running container is now claimed by nobody
    import redis

    r = redis.Redis.from_url(first.env["GATEWAY_REGISTRY_URL"])
    index = f"{instance}:sessions"
    for key in r.smembers(index):
        r.delete(key)
    r.delete(index)
    assert _containers(instance)
    durable()
    wait_until(lambda: not _containers(instance), 30)


def compose_tool() -> str:
    tool = shutil.which("docker-compose")
    if tool is None:
        unavailable("docker-compose is not installed")
    return tool


def test_compose_file_validates() -> None:
    done = subprocess.run([compose_tool(), "config", "-q"], capture_output=True, text=True,
                          env={"GATEWAY_TOKEN": "x" * 20, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr


def test_compose_stack_serves_one_session_through_both_replicas(docker_client) -> None:
    """docker-compose.yml as a user runs it (images from deploy/build.sh): Redis and two
    gateway replicas; a session made through one is served through the other."""
    import httpx

    from tests.conftest import free_port

    for image in ("exec-gateway:latest", "exec-gateway-redis:latest"):
        try:
            docker_client.images.get(image)
        except Exception as exc:
            unavailable(f"{image} was not built ({exc}): run `bash deploy/build.sh`")
    prefix, token = docker_instance_id("compose"), secrets.token_urlsafe(24)
    ports = free_port(), free_port()
    runtime = f"/tmp/egc-{secrets.token_hex(3)}"
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_TOKEN": token, "GATEWAY_RUNTIME_DIR": runtime,
           "GATEWAY_INSTANCE_PREFIX": prefix, "GATEWAY_PORT_1": str(ports[0]),
           "GATEWAY_PORT_2": str(ports[1])}
    if os.environ.get("DOCKER_HOST"):
        env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    compose = [compose_tool(), "-p", prefix.lower().replace(".", "-")]
    up = subprocess.run([*compose, "up", "-d", "--no-build"], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        headers = {"Authorization": f"Bearer {token}"}

        def healthy(url: str) -> bool:
            try:
                return httpx.get(f"{url}/readyz", headers=headers, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        for url in urls:
            wait_until(lambda url=url: healthy(url), 90)
        made = httpx.post(f"{urls[0]}/v1/sessions/demo/execute", headers=headers,
                          json={"code": "x = 6 * 7"}, timeout=120)
        assert made.json()["status"] == "ok", made.text
        read = httpx.post(f"{urls[1]}/v1/sessions/demo/execute", headers=headers,
                          json={"code": "x"}, timeout=120).json()
        assert read["outputs"][0]["data"]["text/plain"] == "42", read
        assert httpx.delete(f"{urls[1]}/v1/sessions/demo", headers=headers,
                            timeout=60).status_code == 204
    finally:
        down = subprocess.run([*compose, "down", "-v", "--remove-orphans"], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=300)
        for n in (1, 2):
            subprocess.run(["docker", "rm", "-f", *_containers(f"{prefix}-{n}")],
                           capture_output=True)
        shutil.rmtree(runtime, ignore_errors=True)
    assert down.returncode == 0, down.stderr


def test_gateway_image_serves_a_request(docker_client, tmp_path) -> None:
    """The compose stack's gateway image (built by scripts/test-deps.sh) runs kernels itself."""
    import httpx

    from tests.conftest import free_port

    try:
        docker_client.images.get("exec-gateway:latest")
    except Exception as exc:
        unavailable(f"exec-gateway:latest was not built ({exc}): run `bash deploy/build.sh`")
    port, token = free_port(), secrets.token_urlsafe(24)
    instance = docker_instance_id("image")
    runtime = f"/tmp/egi-{secrets.token_hex(3)}"
    container = docker_client.containers.run(
        "exec-gateway:latest", detach=True, auto_remove=False,
        ports={"8888/tcp": ("127.0.0.1", port)},
        environment={"GATEWAY_TOKEN": token, "GATEWAY_INSTANCE_ID": instance,
                     "GATEWAY_RUNTIME_DIR": runtime, "GATEWAY_POOL_SIZE": "0"},
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                 runtime: {"bind": runtime, "mode": "rw"}},
        labels={"exec-gateway.test": instance},  # not the kernel labels: it would reap itself
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60)
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{url}/readyz", headers=headers).json()["checks"]["launcher"] == "ok"
        result = httpx.post(f"{url}/v1/sessions/img/execute", headers=headers,
                            json={"code": "6 * 7"}, timeout=60).json()
        assert result["outputs"][0]["data"]["text/plain"] == "42", result
        httpx.delete(f"{url}/v1/sessions/img", headers=headers)
    finally:
        container.remove(force=True)
        for c in containers_of(docker_client, instance):
            c.remove(force=True)
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture
def docker_replicas(gateway_factory, redis_url: str, docker_client):
    """Start Docker-launcher replicas sharing one Redis: ``start("a")`` twice is one replica
    restarted (same instance id and runtime dir). Short leases, so takeovers come quickly."""
    run, token = secrets.token_hex(3), secrets.token_urlsafe(24)
    instances = {name: docker_instance_id(f"{name}{run}") for name in ("a", "b")}

    def start(name: str, lease_ttl_s: float = 2) -> Gateway:
        return gateway_factory(launcher="docker", registry_url=redis_url,
                               instance_id=instances[name], redis_key_prefix=f"rep{run}:",
                               runtime_dir=f"/tmp/egr-{name}{run}", token=token, pool_size=0,
                               lease_ttl_s=lease_ttl_s, lease_renew_s=0.5)

    yield start
    for instance in instances.values():
        subprocess.run(["docker", "rm", "-f", *_containers(instance)], capture_output=True)
    for name in instances:
        shutil.rmtree(f"/tmp/egr-{name}{run}", ignore_errors=True)


def test_a_replica_takes_over_a_crashed_replicas_kernel_with_its_variables(
        docker_replicas) -> None:
    a, b = docker_replicas("a"), docker_replicas("b")
    before = a.execute("survivor", "x = 'kept'")
    a.stop(signal.SIGKILL)
    after = b.execute("survivor", "x")  # waits out A's lease, then adopts A's container
    assert after["outputs"][0]["data"]["text/plain"] == "'kept'", after
    assert after["state_preserved"] is True
    assert after["generation"] == before["generation"]
    # A comes back: the container it started is B's now, and A must leave it alone
    a_again = docker_replicas("a")
    assert a_again.execute("survivor", "x")["outputs"][0]["data"]["text/plain"] == "'kept'"
    assert b.execute("survivor", "x")["outputs"][0]["data"]["text/plain"] == "'kept'"


def test_a_replica_stopping_gracefully_hands_its_sessions_over_at_once(docker_replicas) -> None:
    """SIGTERM (a rolling upgrade): the kernels stay and the leases are given up, so the other
    replica serves the session at its next call, without waiting out a (long) lease."""
    a, b = docker_replicas("a", lease_ttl_s=120), docker_replicas("b", lease_ttl_s=120)
    a.execute("rolling", "x = 'kept'")
    a.stop(signal.SIGTERM)
    started = time.monotonic()
    after = b.execute("rolling", "x")
    assert after["outputs"][0]["data"]["text/plain"] == "'kept'", after
    assert after["state_preserved"] is True
    assert time.monotonic() - started < 60  # far below the 120 s lease it did not wait for


def test_stopping_with_calls_in_flight_keeps_the_kernel_and_says_so(docker_replicas) -> None:
    """SIGTERM while one call runs and another waits: neither restarts the kept kernel (that
    would stop its container); they hear 503 shutting_down, and B takes the session over."""
    import concurrent.futures

    import httpx

    a, b = docker_replicas("a", lease_ttl_s=120), docker_replicas("b", lease_ttl_s=120)
    a.execute("inflight", "x = 'kept'")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(a.client().post, "/v1/sessions/inflight/execute",
                              json={"code": "import time; time.sleep(3)"})
        wait_until(lambda: a.http.get("/v1/sessions/inflight").json()["state"] == "busy", 10)
        queued = pool.submit(a.client().post, "/v1/sessions/inflight/execute",
                             json={"code": "x = 'overwritten'"})
        wait_until(lambda: a.http.get("/v1/sessions/inflight").json()["queued"] == 1, 10)
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(60) == 0
        for call in (running, queued):
            try:
                r = call.result(30)
            except httpx.HTTPError:
                continue  # the connection closed with the process: fine, nothing was claimed
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "shutting_down"
    after = b.execute("inflight", "x")
    assert after["outputs"][0]["data"]["text/plain"] == "'kept'", after
    assert after["state_preserved"] is True
