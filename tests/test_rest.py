"""End to end: the REST session lifecycle, bad input, health/metrics/openapi."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Gateway


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"]
    assert "Traceback" not in response.text
    return str(body["error"]["code"])


def test_create_get_list_delete(gw: Gateway, sid: str) -> None:
    created = gw.http.post("/v1/sessions", json={"session_id": sid})
    assert created.status_code == 201
    assert created.headers["Location"] == f"/v1/sessions/{sid}"
    info = created.json()
    assert info["id"] == sid and info["state"] == "idle" and info["generation"] == 1
    assert len(info["kernel_id"]) == 36
    assert info["limits"]["memory_mb"] == 512
    assert gw.http.get(f"/v1/sessions/{sid}").json()["kernel_id"] == info["kernel_id"]
    assert sid in [s["id"] for s in gw.http.get("/v1/sessions").json()["sessions"]]
    again = gw.http.post("/v1/sessions", json={"session_id": sid})
    assert again.status_code == 409 and error_code(again) == "session_exists"
    assert gw.http.delete(f"/v1/sessions/{sid}").status_code == 204
    missing = gw.http.get(f"/v1/sessions/{sid}")
    assert missing.status_code == 404 and error_code(missing) == "session_not_found"


def test_create_without_id_generates_one(gw: Gateway) -> None:
    created = gw.http.post("/v1/sessions")
    assert created.status_code == 201
    sid = created.json()["id"]
    assert gw.http.delete(f"/v1/sessions/{sid}").status_code == 204


def test_restart_gives_fresh_interpreter_same_id(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "gone = 1")
    restarted = gw.http.post(f"/v1/sessions/{sid}/restart")
    assert restarted.status_code == 200
    assert restarted.json()["generation"] == 2
    result = gw.execute(sid, "'gone' in dir()")
    assert result["outputs"][0]["data"]["text/plain"] == "False"
    assert result["generation"] == 2


def test_limits_may_be_lowered_but_not_raised_past_server_maximum(gw: Gateway, sid: str) -> None:
    low = gw.http.post("/v1/sessions", json={"session_id": sid, "limits": {"memory_mb": 256}})
    assert low.status_code == 201 and low.json()["limits"]["memory_mb"] == 256
    high = gw.http.post("/v1/sessions", json={"limits": {"memory_mb": 10**6}})
    assert high.status_code == 400 and error_code(high) == "limit_out_of_range"


def test_env_outside_allowlist_is_refused(gw: Gateway) -> None:
    r = gw.http.post("/v1/sessions", json={"env": {"LD_PRELOAD": "/x.so"}})
    assert r.status_code == 400 and error_code(r) == "validation_error"


def test_kernel_env_holds_nothing_of_the_gateway(gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, "import os; print(sorted(os.environ))")
    assert "GATEWAY_TOKEN" not in result["stdout"]
    assert gw.token not in gw.execute(sid, "print(dict(os.environ))")["stdout"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[" * 100_000, "invalid_json"),
        (b'{"code": 1}', "validation_error"),
        (b'{"code": "1", "unknown": true}', "validation_error"),
        (b'{"code": "1", "timeout_s": NaN}', "validation_error"),
        (b'{"code": "1", "timeout_s": "5"}', "validation_error"),
        (b'{"code": "1", "timeout_s": -1}', "validation_error"),
        (b'{"code": "1", "timeout_s": 1e308}', "validation_error"),
        (b'{"code": "1", "stdin": "nope"}', "validation_error"),
        (b'"just a string"', "validation_error"),
        (b"\xff\xfe\x00", "invalid_json"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_bad_execute_bodies_get_json_400(gw: Gateway, sid: str, body: bytes, code: str) -> None:
    r = gw.http.post(f"/v1/sessions/{sid}/execute", content=body)
    assert r.status_code == 400, r.text
    assert error_code(r) == code


@pytest.mark.parametrize("bad_id", ["..%2Fx", "x" * 10_000, "%C3%A9t%C3%A9", "-lead", ".hidden",
                                    "a%20b", "a%00b"])
def test_invalid_session_ids_are_400(gw: Gateway, bad_id: str) -> None:
    r = gw.http.post(f"/v1/sessions/{bad_id}/execute", json={"code": "1"})
    assert r.status_code == 400 and error_code(r) == "invalid_session_id"
    r = gw.http.post("/v1/sessions", json={"session_id": "../x"})
    assert r.status_code == 400 and error_code(r) == "validation_error"


def test_code_over_max_code_bytes_is_413(gw: Gateway, sid: str) -> None:
    r = gw.http.post(f"/v1/sessions/{sid}/execute", json={"code": "#" * 1_500_000})
    assert r.status_code == 413 and error_code(r) == "payload_too_large"


def test_body_over_max_request_bytes_is_413(gw: Gateway, sid: str) -> None:
    r = gw.http.post(f"/v1/sessions/{sid}/execute", content=b" " * 3_000_000)
    assert r.status_code == 413 and error_code(r) == "payload_too_large"

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(30):
            yield b" " * 100_000

    r = gw.http.post(f"/v1/sessions/{sid}/execute", content=chunks())
    assert r.status_code == 413 and error_code(r) == "payload_too_large"


def test_wrong_method_and_unknown_path(gw: Gateway) -> None:
    r = gw.http.put("/v1/sessions")
    assert r.status_code == 405 and error_code(r) == "method_not_allowed"
    r = gw.http.get("/v1/nothing-here")
    assert r.status_code == 404 and error_code(r) == "not_found"


def test_unknown_session_operations_are_404(gw: Gateway) -> None:
    for method, path in [("GET", "/v1/sessions/nope"), ("DELETE", "/v1/sessions/nope"),
                         ("POST", "/v1/sessions/nope/interrupt"),
                         ("POST", "/v1/sessions/nope/restart")]:
        r = gw.http.request(method, path)
        assert r.status_code == 404 and error_code(r) == "session_not_found", path


def test_health_ready_metrics_openapi(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "1")
    health = httpx.get(f"{gw.url}/healthz").json()
    assert health["status"] == "ok" and health["launcher"] in ("local", "docker")
    assert health["launcher_details"] == ({} if health["launcher"] == "local" else
                                          {"env_volume": health["launcher_details"]["env_volume"]})
    assert health["default_limits"]["memory_mb"] == 512
    ready = gw.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"launcher": "ok",
                                                                   "registry": "ok"}
    metrics = gw.http.get("/metrics").text
    assert 'gateway_executes_total{status="ok"}' in metrics
    assert "gateway_kernel_starts_total" in metrics
    spec = httpx.get(f"{gw.url}/v1/openapi.json").json()
    assert "/v1/sessions/{session_id}/execute" in spec["paths"]
    assert "ExecuteResult" in spec["components"]["schemas"]
