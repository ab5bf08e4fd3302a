"""Packages: what may be asked for — PEP 508 requirements only (400 invalid_requirement naming
the entry), the operator's allow and deny lists (403 package_not_allowed, dependencies too),
the per-job timeout. One local gateway per policy; no index is ever reached."""

from __future__ import annotations

import secrets
import socket
import subprocess
from typing import Any

import pytest

from gateway import errors
from gateway.packages import requirements
from gateway.settings import Settings
from tests.conftest import wait_until
from tests.test_packages import install, package_settings
from tests.wheels import build_index

INVALID = [
    "",  # empty
    "   ",
    "tabulate @ https://example.invalid/tabulate-0.9.0.whl",  # a direct reference
    "https://example.invalid/tabulate-0.9.0.tar.gz",  # a URL
    "./local/project",  # a path
    "/abs/path/to/pkg",
    "pkg-1.0-py3-none-any.whl",  # a local file name
    "dist.tar.gz",
    "--index-url=https://example.invalid/simple",  # pip options
    "-r requirements.txt",
    "-e .",
    "--extra-index-url https://example.invalid",
    "name==1.0 --hash=sha256:abc",
    "tabulate; os_name == ",  # a broken marker
    "na me",
    "x" * 500,
    "tabulate\nhumanize",
]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("index")
    return {"dir": root / "wheels", "wheels": build_index(root / "wheels", root / "BUILT")}


@pytest.mark.parametrize("entry", INVALID)
def test_parse_refuses_anything_but_a_requirement(entry: str) -> None:
    with pytest.raises(errors.InvalidRequirement) as caught:
        requirements.parse(["tabulate", entry], Settings())
    assert caught.value.message.startswith("packages[1] ")


def test_parse_takes_names_extras_specifiers_and_markers() -> None:
    parsed = requirements.parse(["tabulate==0.9.0", "Requests[socks]>=2,<3",
                                 "humanize; python_version >= '3.8'", "zope.interface"],
                                Settings())
    assert [r.name for r in parsed] == ["tabulate", "Requests", "humanize", "zope.interface"]


def test_lists_match_canonical_names_and_globs() -> None:
    settings = Settings(package_allowlist=["egw_*", "TABULATE"], package_denylist=["egw-big"])
    requirements.check_allowed("tabulate", settings)
    requirements.check_allowed("EGW_Tiny", settings)
    for refused in ("egw.big", "humanize"):
        with pytest.raises(errors.PackageNotAllowed):
            requirements.check_allowed(refused, settings)


def test_every_invalid_requirement_is_a_400_naming_it(gateway_factory: Any,
                                                      index: dict[str, Any]) -> None:
    gw = gateway_factory(pool_size=0, **package_settings(index))
    sid = f"v-{secrets.token_hex(3)}"
    assert gw.http.post("/v1/sessions", json={"session_id": sid}).status_code == 201
    for entry in INVALID:
        r = gw.http.post(f"/v1/sessions/{sid}/packages", json={"packages": ["egw-tiny", entry]})
        assert r.status_code == 400, (entry, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_requirement" and "packages[1]" in error["message"]
    r = gw.http.post(f"/v1/sessions/{sid}/packages", json={"packages": ["egw-tiny"] * 51})
    assert r.status_code == 400 and "at most 50" in r.json()["error"]["message"]
    r = gw.http.post(f"/v1/sessions/{sid}/packages", json={"packages": []})
    assert r.json()["error"]["code"] == "invalid_requirement"
    r = gw.http.post(f"/v1/sessions/{sid}/packages", json={"packages": "egw-tiny"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "validation_error"
    assert gw.http.get(f"/v1/sessions/{sid}/packages/jobs/abc123").status_code == 404
    assert gw.http.post("/v1/sessions/nope/packages",
                        json={"packages": ["egw-tiny"]}).status_code == 404
    # nothing of it was queued
    assert gw.http.get(f"/v1/sessions/{sid}/packages").json() == {"packages": []}


def test_the_allow_and_deny_lists_refuse_with_403(gateway_factory: Any,
                                                  index: dict[str, Any]) -> None:
    gw = gateway_factory(pool_size=0, **package_settings(
        index, package_allowlist='["egw-tiny", "egw-app"]', package_denylist='["egw-t*"]'))
    sid = f"a-{secrets.token_hex(3)}"
    assert gw.http.post("/v1/sessions", json={"session_id": sid}).status_code == 201
    for name in ("egw-base", "egw-tiny"):  # not on the allowlist; on the denylist
        r = gw.http.post(f"/v1/sessions/{sid}/packages", json={"packages": [name]})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "package_not_allowed" and name in r.text
    job = install(gw, sid, "egw-app")  # allowed, but its dependency egw-base is not
    assert job["status"] == "failed" and "dependency is refused" in job["error"], job
    out = gw.execute(sid, "%pip install egw-base")
    assert "not on this gateway's allowlist" in out["stderr"], out


def test_a_job_past_its_timeout_fails_and_says_so(gateway_factory: Any,
                                                   index: dict[str, Any]) -> None:
    gw = gateway_factory(pool_size=0, **package_settings(index, package_job_timeout_s=0.05))
    sid = f"t-{secrets.token_hex(3)}"
    assert gw.http.post("/v1/sessions", json={"session_id": sid}).status_code == 201
    job = install(gw, sid, "egw-tiny")
    assert job["status"] == "failed" and "timed out after" in job["error"], job
    assert gw.execute(sid, "1 + 1")["status"] == "ok"


def test_jobs_queue_one_at_a_time_and_a_delete_cancels_them(gateway_factory: Any,
                                                             index: dict[str, Any]) -> None:
    """A find-links server that accepts and never answers keeps the first job downloading."""
    with socket.socket() as stall:
        stall.bind(("127.0.0.1", 0))
        stall.listen(16)
        url = f"http://127.0.0.1:{stall.getsockname()[1]}/"
        gw = gateway_factory(pool_size=0, package_index_url="",
                             package_find_links=f'["{index["dir"]}", "{url}"]')
        sid = f"c-{secrets.token_hex(3)}"
        assert gw.http.post("/v1/sessions", json={"session_id": sid}).status_code == 201
        first = gw.http.post(f"/v1/sessions/{sid}/packages", json={"packages": ["egw-tiny"]})
        second = gw.http.post(f"/v1/sessions/{sid}/packages", json={"packages": ["egw-base"]})
        wait_until(lambda: gw.http.get(first.json()["status_url"]).json()["status"] == "running")
        assert gw.http.get(second.json()["status_url"]).json()["status"] == "queued"
        assert gw.http.delete(f"/v1/sessions/{sid}").status_code == 204
        wait_until(lambda: gw.log().count(f"package job ended session_id={sid} ") == 2, 30)
        assert "status=succeeded" not in gw.log()
        pids = subprocess.run(["pgrep", "-f", url], capture_output=True, text=True).stdout
        assert pids.strip() == "", "pip download still runs"


def test_the_per_session_cap_refuses_what_does_not_fit(gateway_factory: Any,
                                                       index: dict[str, Any]) -> None:
    gw = gateway_factory(pool_size=0, **package_settings(index, package_max_mb=1))
    sid = f"m-{secrets.token_hex(3)}"
    assert gw.http.post("/v1/sessions", json={"session_id": sid,
                                              "limits": {"disk_mb": 512}}).status_code == 201
    assert install(gw, sid, "egw-tiny")["status"] == "succeeded"
    job = install(gw, sid, "egw-big")
    assert job["status"] == "failed" and "(package_max_mb)" in job["error"], job
    assert gw.execute(sid, "import egw_tiny")["status"] == "ok"


def test_a_one_shot_run_cannot_install_and_keeps_its_stdin(gateway_factory: Any,
                                                           index: dict[str, Any]) -> None:
    gw = gateway_factory(pool_size=0, **package_settings(index))
    r = gw.http.post("/v1/run", json={"code": "%pip install egw-tiny\nprint(input())",
                                      "stdin": ["mine"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert "a one-shot run cannot install packages" in out["stderr"], out
    assert out["stdout"].endswith("mine\n"), out


def test_the_python_client_installs_lists_and_gets_typed_errors(gateway_factory: Any,
                                                                 index: dict[str, Any]) -> None:
    from exec_gateway_client import Gateway as Client
    from exec_gateway_client import errors as client_errors

    gw = gateway_factory(pool_size=0, **package_settings(index))
    with Client(gw.url, gw.token) as client, client.session(f"k-{secrets.token_hex(3)}") as s:
        job = s.packages.install(["egw-tiny"], poll_s=0.1)
        assert job.status == "succeeded" and job.installed == [
            {"name": "egw-tiny", "version": "1.0.0"}], job
        assert s.packages.list() == [{"name": "egw-tiny", "version": "1.0.0"}]
        assert s.run("import egw_tiny; egw_tiny.hello()").text == "'hi'"
        with pytest.raises(client_errors.InvalidRequirement):
            s.packages.install(["-e ."])
        with pytest.raises(client_errors.JobNotFound):
            client.request("GET", f"/v1/sessions/{s.id}/packages/jobs/00ff")
