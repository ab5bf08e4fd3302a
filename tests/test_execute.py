"""End to end: REST execute against real kernels — state, output, errors, stdin, timeouts, death."""

from __future__ import annotations

import concurrent.futures
import json

import pytest

from tests.conftest import Gateway, wait_until


def test_execute_keeps_variables_between_calls(gw: Gateway, sid: str) -> None:
    first = gw.execute(sid, "x = 41")
    assert first["status"] == "ok" and first["state_preserved"] is True
    second = gw.execute(sid, "x + 1")
    assert second["outputs"][0]["data"]["text/plain"] == "42"
    assert second["outputs"][0]["type"] == "execute_result"
    assert second["execution_count"] == first["execution_count"] + 1
    assert second["generation"] == first["generation"] == 1


def test_imports_and_files_persist(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "import json as j\nopen('note.txt', 'w').write('hello')")
    result = gw.execute(sid, "print(j.dumps(open('note.txt').read()))")
    assert result["stdout"] == '"hello"\n'


def test_stdout_and_stderr_are_separate(gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, "import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert result["stdout"] == "out\n"
    assert result["stderr"] == "err\n"


def test_error_reports_name_value_and_plain_traceback(gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, "print('before')\n1/0")
    assert result["status"] == "error"
    assert result["state_preserved"] is True
    assert result["stdout"] == "before\n"
    assert result["error"]["ename"] == "ZeroDivisionError"
    assert result["error"]["evalue"] == "division by zero"
    text = "\n".join(result["error"]["traceback"])
    assert "ZeroDivisionError" in text and "\x1b[" not in text


def test_rich_output_display_and_png(gw: Gateway, sid: str) -> None:
    result = gw.execute(
        sid,
        "from IPython.display import display, HTML\n"
        "display(HTML('<b>hi</b>'))\n"
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
    )
    assert result["status"] == "ok", result
    kinds = [o["data"].keys() for o in result["outputs"]]
    assert any("text/html" in k for k in kinds)
    png = [o for o in result["outputs"] if "image/png" in o["data"]]
    assert png and png[0]["type"] == "display_data"
    assert png[0]["data"]["image/png"].startswith("iVBOR")  # base64 of the PNG magic


def test_stdin_lines_answer_input_in_order(gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, "a = input('a? ')\nb = input()\nprint(a + b)", stdin=["4", "2"])
    assert result["status"] == "ok"
    assert result["stdout"].endswith("42\n")


def test_input_raises_when_stdin_runs_out(gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, "a = input()\nb = input()", stdin=["only one"])
    assert result["status"] == "error"
    assert result["error"]["ename"] == "EOFError"
    assert gw.execute(sid, "a")["outputs"][0]["data"]["text/plain"] == "'only one'"


def test_input_without_stdin_raises_instead_of_hanging(gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, "input()", timeout_s=10)
    assert result["status"] == "error"
    assert result["error"]["ename"] == "StdinNotImplementedError"


def test_timeout_interrupts_and_keeps_state(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "kept = 'yes'")
    result = gw.execute(sid, "while True: pass", timeout_s=0.5)
    assert result["status"] == "timeout"
    assert result["state_preserved"] is True
    assert result["generation"] == 1
    assert gw.execute(sid, "kept")["outputs"][0]["data"]["text/plain"] == "'yes'"


def test_timeout_that_ignores_interrupt_restarts_the_kernel(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "lost = 1")
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
    result = gw.execute(sid, code, timeout_s=0.5)
    assert result["status"] == "timeout"
    assert result["state_preserved"] is False
    assert result["generation"] == 2
    after = gw.execute(sid, "'lost' in dir()")
    assert after["outputs"][0]["data"]["text/plain"] == "False"
    assert after["generation"] == 2 and after["state_preserved"] is True


@pytest.mark.parametrize("code", ["import os; os._exit(1)",
                                  "import ctypes; ctypes.string_at(0)"])
def test_kernel_death_is_reported_and_next_call_gets_fresh_kernel(
    gw: Gateway, sid: str, code: str
) -> None:
    gw.execute(sid, "v = 1")
    dead = gw.execute(sid, code)
    assert dead["status"] == "dead"
    assert dead["state_preserved"] is False
    assert dead["error"]["ename"] == "KernelDied"
    info = gw.http.get(f"/v1/sessions/{sid}").json()
    assert info["state"] == "dead"
    after = gw.execute(sid, "'v' in dir()")
    assert after["status"] == "ok"
    assert after["generation"] == dead["generation"] + 1
    assert after["state_preserved"] is False  # the interpreter was replaced for this call
    assert after["outputs"][0]["data"]["text/plain"] == "False"


def test_output_flood_is_capped_and_gateway_still_answers(gw: Gateway, sid: str) -> None:
    # ~200 MB of output: the result holds at most max_output_bytes (1 MB by default)
    code = ("import sys\nchunk = 'x' * 1_000_000 + '\\n'\n"
            "for _ in range(200): sys.stdout.write(chunk); sys.stdout.flush()")
    result = gw.execute(sid, code, timeout_s=120)
    assert result["status"] == "ok"
    assert result["truncated"] is True
    assert 0 < len(result["stdout"]) <= 1_000_000
    assert gw.http.get("/healthz").status_code == 200
    assert gw.execute(sid, "1 + 1")["outputs"][0]["data"]["text/plain"] == "2"


def test_one_huge_line_is_truncated(gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, "print('y' * 50_000_000)", timeout_s=120)
    assert result["truncated"] is True
    assert len(result["stdout"]) <= 1_000_000


def test_many_display_messages_stay_bounded(gw: Gateway, sid: str) -> None:
    code = ("from IPython.display import display\n"
            "for i in range(100_000): display({'text/plain': 'd' * 20}, raw=True)")
    result = gw.execute(sid, code, timeout_s=300)
    assert result["status"] == "ok"
    assert result["truncated"] is True
    assert len(json.dumps(result["outputs"])) < 20_000_000


def test_concurrent_sessions_have_no_cross_talk(gw: Gateway) -> None:
    sessions = [f"cc-{i}" for i in range(8)]

    def run(pair: tuple[str, int]) -> tuple[str, int, dict]:
        s, n = pair
        return s, n, gw.client().post(
            f"/v1/sessions/{s}/execute", json={"code": f"print('{s}', {n})"}
        ).json()

    for s in sessions:
        gw.execute(s, f"name = '{s}'")
    work = [(s, n) for s in sessions for n in range(20)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, work))
    for s, n, result in results:
        assert result["status"] == "ok", result
        assert result["stdout"] == f"{s} {n}\n"
    for s in sessions:
        assert gw.execute(s, "name")["outputs"][0]["data"]["text/plain"] == repr(s)
        gw.http.delete(f"/v1/sessions/{s}")


def test_calls_to_one_session_run_in_fifo_order_and_interrupt_stops_one(
    gw: Gateway, sid: str
) -> None:
    gw.execute(sid, "order = []\nimport time")
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(gw.client().post, f"/v1/sessions/{sid}/execute",
                               json={"code": "order.append(0); time.sleep(60)"})]
        wait_until(lambda: gw.http.get(f"/v1/sessions/{sid}").json()["state"] == "busy")
        for i in range(1, 8):
            futures.append(pool.submit(gw.client().post, f"/v1/sessions/{sid}/execute",
                                       json={"code": f"order.append({i})"}))
            wait_until(lambda i=i: gw.http.get(f"/v1/sessions/{sid}").json()["queued"] == i)
        assert gw.http.post(f"/v1/sessions/{sid}/interrupt").status_code == 204
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * 8
    assert answers[0].json()["status"] == "interrupted"
    assert answers[0].json()["state_preserved"] is True
    assert {a.json()["status"] for a in answers[1:]} == {"ok"}
    result = gw.execute(sid, "order")
    assert result["outputs"][0]["data"]["text/plain"] == str(list(range(8)))
