"""Auth: token forms, 401s everywhere but /healthz, keys file, and cross-key isolation."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.auth import Auth, read_keys_file
from gateway.errors import Unauthorized
from tests.conftest import Gateway


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
