"""Auth: token forms, 401s everywhere but /healthz, keys file, and cross-key isolation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.auth import Auth, KeysFileError, read_keys_file
from gateway.errors import Unauthorized
from gateway.settings import Settings
from tests.conftest import Gateway, free_port


def test_token_forms_are_accepted(gw: Gateway) -> None:
    for headers, params in [({"Authorization": f"Bearer {gw.token}"}, {}),
                            ({"Authorization": f"token {gw.token}"}, {}),
                            ({}, {"token": gw.token})]:
        r = httpx.get(f"{gw.url}/v1/sessions", headers=headers, params=params)
        assert r.status_code == 200, (headers, params)


@pytest.mark.parametrize("path", ["/v1/sessions", "/v1/sessions/x", "/readyz", "/metrics"])
def test_missing_or_wrong_token_is_401_json(gw: Gateway, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "token"}):
        r = httpx.get(f"{gw.url}{path}", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
    r = httpx.post(f"{gw.url}/v1/sessions/x/execute", json={"code": "1"})
    assert r.status_code == 401
    assert httpx.get(f"{gw.url}/healthz").status_code == 200


def test_sessions_are_invisible_to_other_keys(gateway_factory, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# name token\nalice alice-token-0123456789\nbob bob-token-0123456789abc\n")
    gw = gateway_factory(keys_file=keys, token="")
    alice, bob = gw.client("alice-token-0123456789"), gw.client("bob-token-0123456789abc")
    assert alice.post("/v1/sessions/shared/execute", json={"code": "who = 'alice'"}).json()[
        "status"] == "ok"
    assert bob.get("/v1/sessions/shared").status_code == 404
    assert bob.get("/v1/sessions").json()["sessions"] == []
    assert bob.delete("/v1/sessions/shared").status_code == 404
    # bob's own "shared" is a different session: alice's variable is not there
    result = bob.post("/v1/sessions/shared/execute", json={"code": "'who' in dir()"}).json()
    assert result["outputs"][0]["data"]["text/plain"] == "False"
    assert alice.post("/v1/sessions/shared/execute", json={"code": "who"}).json()[
        "outputs"][0]["data"]["text/plain"] == "'alice'"


def test_generated_token_is_printed_when_none_configured(gateway_factory) -> None:
    gw = gateway_factory(token="")
    token = next(line.split()[1] for line in gw.log().splitlines() if line.startswith("token:"))
    assert httpx.get(f"{gw.url}/v1/sessions",
                     headers={"Authorization": f"Bearer {token}"}).status_code == 200
    rest = [line for line in gw.log().splitlines() if not line.startswith(("token:", "  try:"))]
    assert token not in "\n".join(rest)


def test_auth_can_be_turned_off_explicitly(gateway_factory) -> None:
    gw = gateway_factory(allow_unauthenticated="true")
    assert httpx.get(f"{gw.url}/v1/sessions").status_code == 200
    assert "authentication is OFF" in gw.log()


def test_authenticate_compares_every_key() -> None:
    auth = Auth({"a": "a" * 20, "b": "b" * 20})
    assert auth.authenticate("Bearer " + "b" * 20, None) == "b"
    assert auth.authenticate(None, "a" * 20) == "a"
    with pytest.raises(Unauthorized):
        auth.authenticate("Bearer " + "c" * 20, None)
    with pytest.raises(Unauthorized):
        auth.authenticate("Basic abc", None)


def test_keys_file_rejects_short_tokens(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("alice short\n")
    with pytest.raises(ValueError, match="16"):
        read_keys_file(path)


TOKEN_A, TOKEN_B = "alice-token-0123456789", "bob-token-0123456789abc"


@pytest.mark.parametrize(("content", "says"), [
    ("alice\n", "line 1: expected 'name token'"),
    (f"alice {TOKEN_A} extra\n", "line 1: expected 'name token'"),
    (f"alice {TOKEN_A}\nalice {TOKEN_B}\n", "line 2: key name 'alice' is also on line 1"),
    (f"alice {TOKEN_A}\nbob {TOKEN_A}\n", "line 2: the token of 'bob' is also on line 1"),
    (f"alice:ci {TOKEN_A}\n", "line 1: key name 'alice:ci'"),
    (f"team/alice {TOKEN_A}\n", "line 1: key name 'team/alice'"),
    ("# only comments\n\n", "no keys"),
])
def test_keys_file_problems_are_refused_with_their_line(tmp_path: Path, content: str,
                                                        says: str) -> None:
    path = tmp_path / "keys"
    path.write_text(content)
    with pytest.raises(KeysFileError, match=re.escape(says)) as info:
        read_keys_file(path)
    assert TOKEN_A not in str(info.value) and TOKEN_B not in str(info.value)


def test_keys_file_writable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"alice {TOKEN_A}\n")
    path.chmod(0o620)
    with pytest.raises(KeysFileError, match="writable by group or others"):
        read_keys_file(path)


def test_default_key_beside_the_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"default {TOKEN_A}\n")
    path.chmod(0o600)
    with pytest.raises(KeysFileError, match="'default'"):
        Auth.from_settings(Settings(keys_file=path, token=TOKEN_B))
    path.write_text(f"alice {TOKEN_A}\n")
    with pytest.raises(KeysFileError, match="GATEWAY_TOKEN is also the token of 'alice'"):
        Auth.from_settings(Settings(keys_file=path, token=TOKEN_A))


def run_gateway(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway"], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parent.parent,
                          env={"PATH": os.environ.get("PATH", os.defpath),
                               "GATEWAY_PORT": str(free_port()), **env})


def test_bad_keys_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    for content, mode in [("alice\n", 0o600), (f"a {TOKEN_A}\na {TOKEN_B}\n", 0o600),
                          (f"alice {TOKEN_A}\n", 0o666)]:
        path.write_text(content)
        path.chmod(mode)
        done = run_gateway({"GATEWAY_KEYS_FILE": str(path)})
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("exec-gateway: keys file"), lines
    done = run_gateway({"GATEWAY_KEYS_FILE": str(tmp_path / "missing")})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_keys_file_readable_by_others_is_served_with_a_warning(gateway_factory,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"alice {TOKEN_A}\n")
    path.chmod(0o644)
    gw = gateway_factory(keys_file=path, token="")
    assert gw.client(TOKEN_A).get("/v1/sessions").status_code == 200
    warnings = [line for line in gw.log().splitlines() if "readable by group or others" in line]
    assert len(warnings) == 1, gw.log()
