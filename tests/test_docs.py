"""GET /docs in real headless Chromium: Swagger UI served by the gateway itself (no CDN),
under the page's CSP, renders the operations, and "Try it out" on POST /v1/run succeeds with
the token as X-API-Key."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import Gateway
from tests.test_page import browser, poll

__all__ = ["browser"]  # the fixture, shared with the IDE page's tests


def test_docs_page_serves_swagger_ui_from_the_gateway(
    gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory()
    page = httpx.get(f"{gw.url}/docs", timeout=30)
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert "http" not in page.text.replace("http-equiv", ""), "no URL of another host"
    bundle = httpx.get(f"{gw.url}/docs/static/swagger-ui-bundle.js", timeout=30)
    assert bundle.status_code == 200 and len(bundle.content) > 500_000
    other = httpx.get(f"{gw.url}/docs/static/swagger-editor.js", timeout=30)
    assert other.status_code == 404
    assert 'href="/docs"' in httpx.get(f"{gw.url}/", timeout=30).text


def test_try_it_out_runs_code_in_a_real_browser(
    browser: Any, gateway_factory: Callable[..., Gateway]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    gw = gateway_factory()
    browser.get(f"{gw.url}/docs#token={gw.token}")
    js = browser.execute_script
    poll(lambda: js("return document.querySelectorAll('.opblock').length") >= 8, 30,
         "the operations")
    assert "token=" not in browser.current_url
    paths = js("return [...document.querySelectorAll('.opblock-summary-path')]"
               ".map(e => e.textContent)")
    assert "/v1/run" in paths and "/v1/sessions/{session_id}/execute" in paths
    assert "/v1/sessions/{session_id}/runs/{run_id}" in paths

    op = browser.find_element(By.ID, "operations-default-run")
    op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    poll(lambda: op.find_elements(By.CSS_SELECTOR, ".try-out__btn"), 10, "Try it out")
    op.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    body = poll(lambda: op.find_elements(By.CSS_SELECTOR, "textarea.body-param__text"), 10,
                "the body editor")[0]
    body.send_keys(Keys.CONTROL, "a")
    body.send_keys(Keys.DELETE)
    body.send_keys(json.dumps({"code": "print(6 * 7)", "stdin": "unused"}))
    op.find_element(By.CSS_SELECTOR, "button.execute").click()

    def answer() -> str:
        found = op.find_elements(By.CSS_SELECTOR,
                                 ".live-responses-table tr.response .response-col_status")
        return str(found[0].text) if found else ""

    assert poll(answer, 60, "the response").strip() == "200"
    shown = op.find_element(By.CSS_SELECTOR, ".live-responses-table .microlight").text
    result = json.loads(shown)
    assert result["stdout"] == "42\n" and result["status"] == "ok"
    assert result["session_id"] is None
    curl = op.find_element(By.CSS_SELECTOR, ".curl-command").text
    assert "X-API-Key" in curl, "the token went as the X-API-Key header"
    refused = [e for e in browser.get_log("browser")
               if "Content Security Policy" in e["message"] or e["level"] == "SEVERE"]
    assert not refused, refused
