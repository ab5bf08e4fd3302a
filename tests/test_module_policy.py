"""Module policy (``kernel_blocked_modules``): the kernel refuses to import the blocked
modules with a clear ImportError, in both launchers, sessions and one-shot runs alike —
defense in depth, not a boundary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import LAUNCHERS, Gateway, docker_instance_id


@pytest.fixture(scope="module", params=LAUNCHERS)
def policy_gw(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.conftest import start_gateway

    settings: dict[str, Any] = {"kernel_blocked_modules": '["ctypes", "socket"]'}
    if request.param == "docker":
        request.getfixturevalue("docker_client")
        settings.update(launcher="docker", instance_id=docker_instance_id("policy"))
    gw = start_gateway(tmp_path_factory.mktemp("policy"), **settings)
    yield gw
    gw.stop()


def blocked(result: dict[str, Any], name: str) -> bool:
    error = result["error"] or {}
    return (result["status"] == "error" and error.get("ename") in ("ImportError",
                                                                   "ModuleNotFoundError")
            and f"import of {name!r} is blocked" in error.get("evalue", ""))


def test_blocked_modules_raise_a_clear_import_error(policy_gw: Gateway) -> None:
    gw = policy_gw
    assert blocked(gw.execute("p1", "import ctypes"), "ctypes")
    assert blocked(gw.execute("p1", "import socket"), "socket"), "even though the kernel loaded it"
    assert blocked(gw.execute("p1", "from ctypes import util"), "ctypes")
    assert blocked(gw.execute("p1", "import ctypes.util"), "ctypes.util")
    assert gw.execute("p1", "import json; print(json.dumps([1]))")["stdout"] == "[1]\n"
    by_library = gw.execute("p1", "import importlib, sys\n"
                                  "try:\n    importlib.import_module('ctypes.wintypes')\n"
                                  "except ImportError as e:\n    print('refused:', e.name)")
    assert by_library["stdout"] == "refused: ctypes.wintypes\n", by_library
    gw.http.delete("/v1/sessions/p1")


def test_one_shot_runs_have_the_policy_too(policy_gw: Gateway) -> None:
    r = policy_gw.http.post("/v1/run", json={"code": "import socket"})
    assert r.status_code == 200 and blocked(r.json(), "socket")


def test_no_policy_by_default(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory()
    assert gw.execute("free", "import ctypes, socket; print('ok')")["stdout"] == "ok\n"
