"""The scientific stack by default: `make run`'s local kernels run in their own environment
(.venv-kernel, from kernel_image/requirements.txt) with the Docker image's pinned versions,
and /healthz lists the kernels' libraries in both launchers."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    DOCKER_IMAGE,
    ROOT,
    Gateway,
    docker_instance_id,
    require_kernel_env,
    wait_until,
)

STACK = ("numpy", "pandas", "scipy", "sympy", "matplotlib", "scikit-learn")


def pins() -> dict[str, str]:
    text = (ROOT / "kernel_image" / "requirements.txt").read_text()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.MULTILINE))


@pytest.fixture(scope="module")
def kernel_python() -> Path:
    return require_kernel_env()


def libraries(gw: Gateway) -> dict[str, str]:
    def known() -> dict[str, str]:
        found: dict[str, str] = gw.http.get("/healthz").json()["capabilities"][
            "kernel_libraries"]
        return found
    return wait_until(known, 60, 0.2)  # type: ignore[no-any-return]


def test_the_default_local_kernel_imports_the_scientific_stack(
    kernel_python: Path, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(kernel_python=str(kernel_python))
    code = ("import numpy, pandas, scipy, sympy, matplotlib, sklearn\n"
            "df = pandas.DataFrame({'x': [1, 2, 3]})\n"
            "from sklearn.linear_model import LinearRegression\n"
            "m = LinearRegression().fit(df[['x']], df['x'] * 2)\n"
            "print(pandas.__version__, sklearn.__version__, round(float(m.coef_[0]), 3))")
    out = gw.execute("sci", code)
    assert out["status"] == "ok", out
    want = pins()
    assert out["stdout"] == f"{want['pandas']} {want['scikit-learn']} 2.0\n"
    listed = libraries(gw)
    for name in STACK:
        assert listed[name] == want[name], (name, listed)
    assert "ipykernel" in listed and listed["python"].startswith("3.")


def test_the_gateway_environment_stays_lean() -> None:
    gateway_env = ROOT / ".venv" / "lib"
    assert not list(gateway_env.glob("python3*/site-packages/sklearn")), \
        "scikit-learn belongs to the kernels' environment, not the gateway's"


@pytest.mark.docker
def test_healthz_lists_the_kernel_image_libraries(
    docker_client: Any, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(launcher="docker", instance_id=docker_instance_id("libs"))
    listed = libraries(gw)
    want = pins()
    for name in STACK:
        assert listed[name] == want[name], (name, listed)
    out = gw.execute("sci", "import sklearn, pandas; print(sklearn.__version__)")
    assert out["stdout"] == f"{want['scikit-learn']}\n"



# a listing that takes a while, so the process asking can be killed while it runs
SLOW_LISTING = """
import asyncio, sys
import docker
from gateway.launchers.docker_exec import libraries
from gateway.settings import Settings
settings = Settings(launcher="docker", instance_id=sys.argv[1])
asyncio.run(libraries(docker.from_env(), settings, "import time; time.sleep(3); print('{}')"))
"""


@pytest.mark.docker
def test_a_listing_cut_short_leaves_no_container(docker_client: Any) -> None:
    """The library listing's throwaway container outlives a gateway killed while it runs;
    the engine removes it once it ends; one never started is removed by the next listing."""
    instance = docker_instance_id("probe")
    label = {"label": f"exec-gateway.probe={instance}"}
    # one its gateway created and never started (stopped in between): the next listing
    # removes it
    never_started = docker_client.api.create_container(
        DOCKER_IMAGE, ["-c", "pass"], entrypoint="/opt/kernel/bin/python",
        network_disabled=True, labels={"exec-gateway.probe": instance})["Id"]
    asking = subprocess.Popen([sys.executable, "-c", SLOW_LISTING, instance], cwd=ROOT,
                              stderr=subprocess.PIPE)

    def running() -> bool:
        if asking.poll() is not None:
            raise AssertionError(f"the listing ended early: {asking.communicate()[1]!r}")
        return bool(docker_client.api.containers(filters={**label, "status": "running"}))

    try:
        wait_until(running, 60, 0.05)
    finally:
        asking.kill()
        asking.wait(10)
    assert docker_client.api.containers(all=True, filters=label)  # (still running)
    assert not docker_client.api.containers(all=True, filters={"id": never_started})
    wait_until(lambda: not docker_client.api.containers(all=True, filters=label), 30, 0.2)
