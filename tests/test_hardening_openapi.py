"""/v1/openapi.json tells the truth: schemathesis drives every operation of a live gateway
(with auth) from the document and checks every answer against it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest
import schemathesis

from tests.conftest import Gateway, start_gateway


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway sized for the generated calls: every created session is a real kernel, reaped
    after a few idle seconds."""
    gateway = start_gateway(tmp_path_factory.mktemp("gw"), pool_size=0, idle_timeout_s=3,
                            reap_interval_s=1, max_sessions=64, max_sessions_per_key=64,
                            default_timeout_s=5, max_timeout_s=30,
                            package_index_url="")  # package jobs never reach an index
    yield gateway
    gateway.stop()
    shutil.rmtree(gateway.env["GATEWAY_RUNTIME_DIR"], ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(600)  # 22 operations, some with real kernels: ~160 s on a loaded 2-core VM
def test_every_operation_conforms_to_the_openapi_document(api: Gateway) -> None:
    """Every check schemathesis has, every phase (examples, coverage: boundary values and
    undeclared methods, fuzzing, stateful), bounded examples, with the API key."""
    from schemathesis.engine import Status, from_schema
    from schemathesis.engine.events import FatalError, NonFatalError, ScenarioFinished

    config = schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {api.token}"},
        "generation": {"max-examples": 10, "deterministic": True},
        # every check; a kernel start on a loaded machine may take seconds
        "checks": {"enabled": True, "max_response_time": 120},
        "request-timeout": 60,
        "warnings": False,
        # a schema-valid run may still be refused for what no schema can say: no main() for
        # entrypoint "main" (400 entrypoint_missing), a test's regex that does not compile
        # (nor which strings are PEP 508 requirements: 400 invalid_requirement)
        "operations": [{"include-path-regex": "^/v1/(run|sessions/[^/]+/(execute|packages))$",
                        "checks": {"positive_data_acceptance": {"enabled": False}}}],
    })
    schema = schemathesis.openapi.from_url(f"{api.url}/v1/openapi.json", config=config)
    operations = {op.ok().label for op in schema.get_all_operations()}
    assert len(operations) == 22, operations
    failures: list[str] = []
    tested: set[str] = set()
    for event in from_schema(schema).execute():
        if isinstance(event, (FatalError, NonFatalError)):
            failures.append(f"{getattr(event, 'label', '')}: {event.info.format()}")
        if isinstance(event, ScenarioFinished) and event.label:
            if event.status is not Status.SKIP:
                tested.add(event.label)
            for checks in event.recorder.checks.values():
                failures.extend(f"{event.label}: {check.name}: {check.failure_info.failure.title}"
                                f"\n{check.failure_info.code_sample}"
                                for check in checks
                                if check.status is Status.FAILURE and check.failure_info)
    assert not failures, "\n\n".join(sorted(set(failures)))
    assert tested >= operations, operations - tested


def test_the_document_covers_every_v1_route(api: Gateway) -> None:
    paths = httpx.get(f"{api.url}/v1/openapi.json").json()["paths"]
    assert set(paths) == {"/v1/sessions", "/v1/sessions/{session_id}",
                          "/v1/sessions/{session_id}/execute",
                          "/v1/sessions/{session_id}/interrupt",
                          "/v1/sessions/{session_id}/restart",
                          "/v1/sessions/{session_id}/hibernate", "/v1/sessions/{session_id}/runs/"
                          "{run_id}", "/v1/run", "/v1/sessions/{session_id}/files",
                          "/v1/sessions/{session_id}/files/{path}",
                          "/v1/sessions/{session_id}/packages",
                          "/v1/sessions/{session_id}/packages/jobs/{job_id}", "/healthz", "/readyz",
                          "/metrics"}


def test_405_names_the_allowed_methods(api: Gateway) -> None:
    r = httpx.request("PUT", f"{api.url}/v1/sessions",
                      headers={"Authorization": f"Bearer {api.token}"})
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["Allow"].split(",")} == {"GET", "POST", "OPTIONS"}
