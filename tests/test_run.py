"""End to end: POST /v1/run — stateless runs, main() results, graded test cases, resource
figures and X-API-Key, with real kernels in both launchers."""

from __future__ import annotations

import base64
import threading
from typing import Any

import httpx
import psutil

from tests.conftest import Gateway
from tests.test_rest import error_code


def run(gw: Gateway, **body: Any) -> dict[str, Any]:
    r = gw.http.post("/v1/run", json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_run_answers_input_data_string_from_a_fresh_sandbox(gw: Gateway) -> None:
    out = run(gw, code="print(input()[::-1]); print(input())", stdin="hello\nworld\n",
              timeout_s=5, limits={"memory_mb": 128})
    assert out["status"] == "ok" and out["stdout"] == "olleh\nworld\n"
    assert out["session_id"] is None and out["duration_ms"] > 0
    assert out["cpu_ms"] >= 0 and out["memory_peak_mb"] > 10
    assert gw.http.get("/v1/sessions").json()["sessions"] == []  # unlisted, gone


def test_stdin_as_list_and_running_out_raises_eoferror(gw: Gateway) -> None:
    out = run(gw, code="a = input(); b = input(); print(a + b); input()", stdin=["x", "y"])
    assert out["stdout"] == "xy\n" and out["status"] == "error"
    assert out["error"]["ename"] == "EOFError"


def test_nothing_of_one_run_is_visible_to_the_next(gw: Gateway) -> None:
    first = run(gw, code="secret = 42\nopen('left.txt', 'w').write('x')\n"
                         "import os\nprint(os.path.exists('left.txt'))")
    assert first["stdout"] == "True\n"
    second = run(gw, code="import os\nprint('secret' in dir(), os.path.exists('left.txt'))")
    assert second["stdout"] == "False False\n"


def test_run_never_reuses_a_session_kernel(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "mine = 1")
    out = run(gw, code="print('mine' in dir())")
    assert out["stdout"] == "False\n"
    assert gw.execute(sid, "print(mine)")["stdout"] == "1\n"


def test_memory_limit_per_run_is_memory_exceeded(gw: Gateway) -> None:
    out = run(gw, code="b = b'x' * (300 << 20)", limits={"memory_mb": 128})
    assert out["status"] == "memory_exceeded", out
    assert out["memory_peak_mb"] is not None and out["memory_peak_mb"] <= 140
    after = run(gw, code="print('fine')")
    assert after["status"] == "ok"


def test_timeout_is_the_same_ladder_as_sessions(gw: Gateway) -> None:
    out = run(gw, code="while True: pass", timeout_s=1)
    assert out["status"] == "timeout"
    if out["state_preserved"]:  # the interrupt worked (else, under load, the kernel was killed)
        assert out["error"]["ename"] == "KeyboardInterrupt"


def test_cpu_and_memory_figures_are_plausible_for_200_mb(gw: Gateway, sid: str) -> None:
    code = "b = b'x' * (200 << 20)\nsum(b[::4096])"
    for out in (run(gw, code=code), gw.execute(sid, code)):
        assert out["status"] == "ok", out
        assert 200 <= out["memory_peak_mb"] <= 200 + 150, out  # the interpreter is ~50 MiB
        assert 10 <= out["cpu_ms"] <= 20_000, out  # filling 200 MiB takes CPU time
    gw.execute(sid, "del b")
    small = gw.execute(sid, "x = 1")
    assert small["memory_peak_mb"] < 200, "the peak is per call, not the kernel's lifetime"


# ------------------------------------------------------------------ entrypoint
def test_main_return_value_comes_back_as_json(gw: Gateway) -> None:
    code = 'def main():\n    print("hi")\n    return {"mean": 2.5, "n": 4, "ok": [True, None]}'
    out = run(gw, code=code, entrypoint="main")
    assert out["status"] == "ok" and out["stdout"] == "hi\n"
    assert out["result"] == {"mean": 2.5, "n": 4, "ok": [True, None]}
    assert out["outputs"] == []  # the value travels apart from the outputs


def test_main_without_return_value_is_null(gw: Gateway) -> None:
    out = run(gw, code="def main():\n    print(1)", entrypoint="main")
    assert out["status"] == "ok" and out["result"] is None and out["stdout"] == "1\n"


def test_no_main_is_400_entrypoint_missing(gw: Gateway) -> None:
    r = gw.http.post("/v1/run", json={"code": "x = 1", "entrypoint": "main"})
    assert r.status_code == 400 and error_code(r) == "entrypoint_missing"


def test_non_serialisable_or_nan_result_is_an_error_status(gw: Gateway) -> None:
    for value in ("{1, 2}", "float('nan')", "float('inf')"):
        out = run(gw, code=f"def main():\n    return {value}", entrypoint="main")
        assert out["status"] == "error", out
        assert "JSON-serialisable" in out["error"]["evalue"]
        assert not any("exec(compile(" in line for line in out["error"]["traceback"])
    raised = run(gw, code="def main():\n    raise ValueError('boom')", entrypoint="main")
    assert raised["status"] == "error" and raised["error"]["evalue"] == "boom"


def test_entrypoint_on_session_execute_keeps_the_namespace_clean(gw: Gateway, sid: str) -> None:
    out = gw.execute(sid, "def main():\n    return [1, 2]", entrypoint="main")
    assert out["result"] == [1, 2] and out["execution_count"] == 1
    names = gw.execute(sid, "print(sorted(n for n in dir() if n.startswith('_m') or n == '_ns'))")
    assert names["stdout"] == "[]\n" and names["execution_count"] == 2
    r = gw.http.post(f"/v1/sessions/{sid}/execute", json={"code": "del main", "entrypoint": "main"})
    assert r.status_code == 400 and error_code(r) == "entrypoint_missing"


def test_result_is_bounded_by_max_output_bytes(gw: Gateway) -> None:
    out = run(gw, code="def main():\n    return 'x' * 3_000_000", entrypoint="main")
    assert out["status"] == "error" and out["error"]["ename"] == "ResultTooLarge"
    assert out["truncated"] is True and out["result"] is None


# ------------------------------------------------------------------ tests
ADD = "def add(a, b):\n    return a + b"


def test_graded_tests_from_the_issue(gw: Gateway) -> None:
    out = run(gw, code=ADD, tests=[
        {"name": "small", "code": "print(add(5, 3))", "expected_stdout": "8"},
        {"name": "io", "stdin": "2 3", "code": "a, b = map(int, input().split()); "
                                              "print(add(a, b))", "expected_stdout": "5"},
        {"code": "print(add(1, 1))", "expected_stdout": "3"}])
    assert out["status"] == "ok" and out["session_id"] is None
    report = out["tests"]
    assert (report["passed"], report["failed"]) == (2, 1)
    small, io, third = report["results"]
    assert small == {**small, "name": "small", "passed": True, "status": "ok", "stdout": "8\n",
                     "expected_stdout": "8", "diff": None, "error": None}
    assert io["passed"] and io["stdout"] == "5\n" and io["duration_ms"] > 0
    assert third["name"] == "test 3" and not third["passed"] and third["status"] == "ok"
    assert third["diff"] == "--- expected\n+++ actual\n@@ -1 +1 @@\n-3\n+2"


def test_each_compare_mode(gw: Gateway) -> None:
    cases = [  # (compare, printed, expected, passes)
        ("exact", "8", "8\n", True), ("exact", "8", "8", False),
        ("strip", "a  \\nb\\n\\n", "a\nb", True), ("strip", "8", "18", False),
        ("strip", " 8", "8", False),
        ("whitespace", " a\\t b \\n c", "a b c", True), ("whitespace", "ab", "a b", False),
        ("regex", "abc 123", r"abc \d+", True), ("regex", "abc 123 tail", r"abc \d+", False),
        ("regex", "x\\ny", r"x.y", True)]
    tests = [{"code": f"print('{printed}')", "expected_stdout": expected, "compare": mode}
             for mode, printed, expected, _ in cases]
    report = run(gw, code="pass", tests=tests)["tests"]
    got = [(c[0], c[1], r["passed"]) for c, r in zip(cases, report["results"], strict=True)]
    assert got == [(c[0], c[1], c[3]) for c in cases]
    assert all(r["diff"] for r in report["results"] if not r["passed"])


def test_never_a_substring_match(gw: Gateway) -> None:
    report = run(gw, code="print('the answer is 42')",
                 tests=[{"expected_stdout": "42"}])["tests"]
    assert report["results"][0]["passed"] is False


def test_expected_result_with_main(gw: Gateway) -> None:
    code = "import sys\ndef main():\n    return sorted(map(int, input().split()))"
    report = run(gw, code=code, entrypoint="main", tests=[
        {"stdin": "3 1 2", "expected_result": [1, 2, 3]},
        {"stdin": "3 1 2", "expected_result": [3, 2, 1]},
        {"stdin": "1", "expected_result": [True]}])["tests"]
    assert [r["passed"] for r in report["results"]] == [True, False, False]
    assert report["results"][0]["result"] == [1, 2, 3]
    assert report["results"][1]["diff"]


def test_infinite_loop_and_crash_among_passing_tests(gw: Gateway) -> None:
    out = run(gw, code=ADD, timeout_s=10, tests=[
        {"name": "ok1", "code": "print(add(1, 2))", "expected_stdout": "3"},
        {"name": "loop", "code": "while True: pass", "timeout_s": 1},
        {"name": "crash", "code": "import os; os._exit(3)"},
        {"name": "state", "code": "print('crashed' in dir())", "expected_stdout": "False"},
        {"name": "ok2", "code": "crashed = 1\nprint(add(2, 2))", "expected_stdout": "4"}])
    results = {r["name"]: r for r in out["tests"]["results"]}
    assert [r["name"] for r in out["tests"]["results"]] == ["ok1", "loop", "crash", "state", "ok2"]
    assert results["loop"]["status"] == "timeout" and not results["loop"]["passed"]
    assert results["crash"]["status"] == "dead" and not results["crash"]["passed"]
    assert results["crash"]["error"]["evalue"] == "exited with code 3"
    assert all(results[n]["passed"] for n in ("ok1", "state", "ok2"))
    assert out["tests"] == {**out["tests"], "passed": 3, "failed": 2}


def test_a_failing_submission_fails_its_tests_too(gw: Gateway) -> None:
    out = run(gw, code="def add(a, b) return a", tests=[{"code": "print(1)",
                                                         "expected_stdout": "1"}])
    assert out["status"] == "error" and out["error"]["ename"] == "SyntaxError"
    assert out["tests"]["results"][0]["status"] == "error"
    assert out["tests"]["failed"] == 1


# ------------------------------------------------------------------ requests and auth
def test_inline_files_are_in_the_workspace_of_the_run_and_of_each_test(gw: Gateway) -> None:
    data = bytes(range(256)) * 4
    out = run(gw, code="import os\ndata = open('in/blob.bin', 'rb').read()\n"
                       "print(len(data), data[:3], open('notes.txt').read())",
              files=[{"path": "in/blob.bin", "content_base64": base64.b64encode(data).decode()},
                     {"path": "notes.txt", "content_base64": base64.b64encode(b"hi").decode()}],
              tests=[{"code": "print(open('notes.txt').read())",  # after the submission's
                      "expected_stdout": "1024 b'\\x00\\x01\\x02' hi\nhi"}])
    assert out["status"] == "ok", out
    assert out["stdout"] == "1024 b'\\x00\\x01\\x02' hi\n"
    assert out["files_changed"] == []  # placed before the code ran, not made by it
    assert out["tests"]["passed"] == 1, out["tests"]
    assert run(gw, code="import os; print(os.path.exists('notes.txt'))")["stdout"] == "False\n"


def test_bad_requests_are_400(gw: Gateway) -> None:
    for body, code in [
        ({"code": "1", "tests": [{"code": "1"}] * 51}, "validation_error"),
        ({"code": "1", "tests": [{"expected_stdout": "(", "compare": "regex"}]},
         "validation_error"),
        ({"code": "1", "tests": [{"compare": "substring"}]}, "validation_error"),
        ({"code": "1", "files": [{"path": "../x", "content_base64": ""}]}, "invalid_path"),
        ({"code": "1", "files": [{"path": "x", "content_base64": "!!"}]}, "validation_error"),
        ({"code": "1", "timeout_s": float("nan")}, "invalid_json"),
        ({"code": "1", "limits": {"memory_mb": 10**7}}, "limit_out_of_range"),
        ({"code": "1", "entrypoint": "other"}, "validation_error"),
    ]:
        r = gw.http.post("/v1/run", json=body) if code != "invalid_json" else gw.http.post(
            "/v1/run", content=b'{"code": "1", "timeout_s": NaN}')
        assert r.status_code == 400, (body, r.text)
        assert error_code(r) in (code, "validation_error"), (body, r.text)


def test_x_api_key_alone_is_accepted_wherever_bearer_is(gw: Gateway, sid: str) -> None:
    with httpx.Client(base_url=gw.url, headers={"X-API-Key": gw.token}, timeout=60) as c:
        assert c.post("/v1/run", json={"code": "print(2)"}).json()["stdout"] == "2\n"
        assert c.post(f"/v1/sessions/{sid}/execute", json={"code": "1"}).status_code == 200
        assert c.get(f"/v1/sessions/{sid}").status_code == 200
        assert c.get("/api/kernels").status_code == 200
        bad = c.post("/v1/run", json={"code": "1"}, headers={"X-API-Key": "wrong-token"})
        assert bad.status_code == 401 and error_code(bad) == "unauthorized"
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        missing = c.post("/v1/run", json={"code": "1"})
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["error"]["message"]


def test_one_shot_runs_count_against_capacity(gateway_factory: Any) -> None:
    gw = gateway_factory(max_sessions=1, pool_size=0)
    gw.execute("only", "1")
    full = gw.http.post("/v1/run", json={"code": "1"})
    assert full.status_code == 503 and error_code(full) == "capacity_exceeded"
    gw.http.delete("/v1/sessions/only")
    assert run(gw, code="print(1)")["stdout"] == "1\n"


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_fifty_tests_in_parallel_stay_within_capacity(gateway_factory: Any) -> None:
    # no pool: its background boots are spare kernels outside sessions + one-shot places
    gw = gateway_factory(max_sessions=5, run_concurrency=4, pool_size=0)
    gw.execute("other", "1")  # a session holds one place
    parent = psutil.Process(gw.proc.pid)
    most = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, sum(1 for p in parent.children() if _alive(p)))
            stop.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = run(gw, code=ADD, tests=[
            {"name": f"t{i}", "code": f"print(add({i}, 1))", "expected_stdout": str(i + 1)}
            for i in range(50)])
    finally:
        stop.set()
        watcher.join()
    assert out["tests"]["passed"] == 50 and out["tests"]["failed"] == 0
    assert [r["name"] for r in out["tests"]["results"]] == [f"t{i}" for i in range(50)]
    assert 3 <= most <= 5, f"{most} kernels at once; capacity is 5"
    assert gw.execute("other", "print('still here')")["stdout"] == "still here\n"
