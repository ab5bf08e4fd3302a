"""HTTP hardening: oversized bodies answered so real clients read the answer; connection floods
cannot take the gateway down (file descriptors, header timeouts, log volume)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import requests

LIMIT = 2_000_000  # max_request_bytes of the gateways below (the default)


def test_oversized_body_gets_a_readable_413_with_requests_and_urllib(gateway_factory: Any
                                                                     ) -> None:
    gw = gateway_factory(max_request_bytes=LIMIT)
    url = f"{gw.url}/v1/sessions/big/execute"
    headers = {"Authorization": f"Bearer {gw.token}", "Content-Type": "application/json"}
    body = json.dumps({"code": "#" * (3 * LIMIT)}).encode()  # over the limit, under the bound
    with requests.Session() as http:
        for _ in range(3):  # the connection stays usable after each 413
            r = http.post(url, data=body, headers=headers, timeout=30)
            assert r.status_code == 413, r.text
            assert r.json()["error"]["code"] == "payload_too_large"
        assert http.get(f"{gw.url}/v1/sessions", headers=headers, timeout=30).status_code == 200
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("expected 413")
    except urllib.error.HTTPError as exc:
        assert exc.code == 413
        assert json.loads(exc.read())["error"]["code"] == "payload_too_large"
    # no body at all on an endpoint that ignores it: still refused, still readable
    r = requests.post(f"{gw.url}/v1/sessions/big/interrupt", data=body, headers=headers,
                      timeout=30)
    assert r.status_code == 413, r.text
