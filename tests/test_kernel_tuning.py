"""The kernel's tuning (gateway/kernel_tuning.py) is applied, and every behaviour it must keep
is still there: ``execution_count``, ``In``/``Out``/``_i<n>``, ``%history`` (``-g`` too),
top-level ``await``, rich display (registered printers, ``_repr_*_``, pandas, matplotlib),
stdout/stderr before the result, ``input()``; kernel subshells only when the setting asks.
Both launchers (the Docker image runs ipykernel 6, the local kernels the gateway's own)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Connect, Gateway, docker_instance_id, require_kernel_env

LEVERS = {"execute_sleep", "history_in_memory", "quick_async_check", "skip_empty_flush",
          "plain_display", "cached_signatures", "no_debugger", "lazy_jupyter_client",
          "no_unshown_log_records", "direct_iopub"}


def value(gw: Gateway, sid: str, code: str) -> Any:
    """The JSON the cell's last line prints."""
    result = gw.execute(sid, code)
    assert result["status"] == "ok", result
    return json.loads(result["stdout"].strip().splitlines()[-1])


def test_every_lever_is_applied(gw: Gateway, sid: str) -> None:
    applied = set(value(gw, sid, "import json\nk = get_ipython().kernel\n"
                                 "print(json.dumps(list(k._exec_gateway_tuning)))"))
    assert LEVERS <= applied, LEVERS - applied
    facts = value(gw, sid, "import json, threading\nk = get_ipython().kernel\n"
                           "from ipykernel.kernelapp import IPKernelApp\n"
                           "print(json.dumps([k._execute_sleep, k.shell.history_manager.hist_file,"
                           " not getattr(k, 'shell_channel_thread', None),"
                           " IPKernelApp.instance().iopub_thread.direct_sends,"
                           " sorted(t.name for t in threading.enumerate())]))")
    sleep, hist_file, no_channel_thread, direct_sends, threads = facts
    assert sleep == 0 and hist_file == ":memory:" and no_channel_thread and direct_sends
    # no SQLite saving thread, no shell-channel thread (ipykernel 7)
    assert not any("History" in name or "Shell channel" in name for name in threads), threads


def test_execution_count_in_out_and_input_variables(gw: Gateway, sid: str) -> None:
    first = gw.execute(sid, "a = 20")
    second = gw.execute(sid, "a + 1")
    third = gw.execute(sid, "a + 2")
    assert [second["execution_count"], third["execution_count"]] == \
        [first["execution_count"] + 1, first["execution_count"] + 2]
    n = third["execution_count"]
    got = value(gw, sid, f"import json\nprint(json.dumps([Out[{n - 1}], Out[{n}], _, __,"
                         f" In[{n - 1}], _i{n}, len(In)]))")
    assert got == [21, 22, 22, 21, "a + 1", "a + 2", n + 2]


def test_history_magic_lists_and_searches_this_sessions_cells(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "marker_one = 1")
    gw.execute(sid, "marker_two = 2")
    listed = gw.execute(sid, "%history")
    assert listed["stdout"].splitlines()[-3:] == ["marker_one = 1", "marker_two = 2", "%history"]
    found = gw.execute(sid, "%history -g marker_t*")
    assert "marker_two = 2" in found["stdout"] and "marker_one" not in found["stdout"], found
    last = gw.execute(sid, "%history -l 1")
    assert "%history -g marker_t*" in last["stdout"], last
    bump = gw.execute(sid, "marker_one += 10")
    rerun = gw.execute(sid, f"%rerun {bump['execution_count']}\nprint(marker_one)")
    assert rerun["stdout"].strip().endswith("21"), rerun  # the cell ran again


def test_top_level_await_still_runs(gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, "import asyncio\nawait asyncio.sleep(0)\n6 * 7")
    assert result["status"] == "ok" and result["outputs"][0]["data"]["text/plain"] == "42"
    gw.execute(sid, "async def twice(x):\n    return 2 * x")
    result = gw.execute(sid, "[await twice(i) for i in range(3)]")
    assert result["outputs"][0]["data"]["text/plain"] == "[0, 2, 4]", result
    result = gw.execute(sid, "'await and async in a string only'")
    assert result["outputs"][0]["data"]["text/plain"] == "'await and async in a string only'"


def test_plain_values_honour_registered_printers(gw: Gateway, sid: str) -> None:
    plain = gw.execute(sid, "5")
    assert plain["outputs"][0]["data"] == {"text/plain": "5"}, plain
    gw.execute(sid, "f = get_ipython().display_formatter.formatters\n"
                    "f['text/html'].for_type(int, lambda n: f'<b>{n}</b>')\n"
                    "f['text/markdown'].for_type(object, lambda o: 'md')")
    result = gw.execute(sid, "7")
    assert result["outputs"][0]["data"] == {"text/plain": "7", "text/html": "<b>7</b>",
                                            "text/markdown": "md"}, result
    text = gw.execute(sid, "'s'")  # str: only the printer registered for object applies
    assert text["outputs"][0]["data"] == {"text/plain": "'s'", "text/markdown": "md"}, text


def test_rich_reprs_and_mimebundles_are_displayed(gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, "class R:\n"
                             "    def _repr_html_(self): return '<i>r</i>'\n"
                             "    def _repr_latex_(self): return '$r$'\n"
                             "    def __repr__(self): return 'R()'\n"
                             "class M:\n"
                             "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
                             "        return {'application/json': {'m': 1}, 'text/plain': 'M'}\n"
                             "display(M())\nR()")
    assert result["status"] == "ok", result
    shown, last = result["outputs"]
    assert shown["type"] == "display_data"
    assert shown["data"]["application/json"] == {"m": 1} and shown["data"]["text/plain"] == "M"
    assert last["type"] == "execute_result"
    assert last["data"] == {"text/plain": "R()", "text/html": "<i>r</i>", "text/latex": "$r$"}


@pytest.fixture(params=[pytest.param("local", id="local"),
                        pytest.param("docker", id="docker", marks=pytest.mark.docker)])
def stack_gw(request: pytest.FixtureRequest, gateway_factory: Any) -> Gateway:
    """A gateway whose kernels have the scientific stack: the Docker image, or locally the
    kernels' own environment (.venv-kernel, as `make run` uses)."""
    if request.param == "docker":
        request.getfixturevalue("docker_client")  # (fails in CI when there is no engine)
        gw: Gateway = gateway_factory(launcher="docker", instance_id=docker_instance_id("stk"))
        return gw
    local: Gateway = gateway_factory(kernel_python=str(require_kernel_env()))
    return local


def test_pandas_and_matplotlib_display_in_a_tuned_kernel(stack_gw: Gateway) -> None:
    result = stack_gw.execute("stack", "import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    data = result["outputs"][0]["data"]
    assert "<table" in data["text/html"] and "a" in data["text/plain"], result
    plot = stack_gw.execute("stack", "import matplotlib.pyplot as plt\nplt.plot([1, 3])\n"
                                     "plt.show()")
    assert plot["outputs"][0]["data"]["image/png"].startswith("iVBOR"), plot


async def test_output_precedes_the_result_and_idle(gw: Gateway, sid: str, connect: Connect
                                                   ) -> None:
    w = await connect(gw, sid)
    for rid in ("a", "b", "c"):  # several cells: no flush may be skipped when output waits
        await w.execute(rid, "import sys\nsys.stdout.write('o')\nsys.stderr.write('e')\n"
                             "print('line')\n3")
        await w.result(rid)
        kinds = [e["type"] for e in w.run_events(rid)]
        assert kinds.index("execute_result") > max(i for i, k in enumerate(kinds)
                                                   if k == "stream"), kinds
        assert w.stream_text(rid) == "oline\n" and w.stream_text(rid, "stderr") == "e"


def test_output_of_a_thread_after_the_cell_reaches_the_next_one(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "import threading, time\n"
                    "threading.Timer(0.3, lambda: print('late', flush=True)).start()")
    result = gw.execute(sid, "import time\ntime.sleep(1.0)\nprint('now')")
    assert result["stdout"] == "late\nnow\n", result


def test_input_still_reads_stdin(gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, "print(input('name? ') + '!')", stdin=["ada"])
    assert result["stdout"].endswith("ada!\n"), result


def test_lightened_imports_stay_whole_for_user_code(gw: Gateway, sid: str) -> None:
    got = value(gw, sid, "import json, jupyter_client, debugpy\n"
                         "from jupyter_client import KernelManager\n"
                         "print(json.dumps([KernelManager.__name__, jupyter_client.__version__,"
                         " hasattr(debugpy, 'listen'),"
                         " hasattr(get_ipython().kernel, 'debugger')]))")
    assert got[0] == "KernelManager" and got[1][0].isdigit() and got[2] is True
    assert got[3] is False  # the kernel offers no debugger unless kernel_debugger is on


def test_debugger_only_when_the_setting_asks(gateway_factory: Any) -> None:
    on = gateway_factory(kernel_debugger="true")
    got = value(on, "d-on", "import json\nk = get_ipython().kernel\n"
                            "print(json.dumps([hasattr(k, 'debugger'),"
                            " 'no_debugger' in k._exec_gateway_tuning]))")
    assert got == [True, False]


def test_subshells_only_when_the_setting_asks(gateway_factory: Any) -> None:
    import ipykernel

    if int(ipykernel.__version__.split(".")[0]) < 7:
        pytest.skip(f"ipykernel {ipykernel.__version__} has no kernel subshells")
    code = ("import json\nk = get_ipython().kernel\n"
            "print(json.dumps([bool(getattr(k, 'shell_channel_thread', None)),"
            " 'no_shell_channel_thread' in k._exec_gateway_tuning]))")
    on = gateway_factory(kernel_subshells="true")
    assert value(on, "s-on", code) == [True, False]
    assert value(on, "s-on", "print(1 + 1)") == 2


def test_stream_of_many_lines_is_complete(gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, "for i in range(3000):\n    print(i, flush=True)")
    lines = result["stdout"].splitlines()
    assert lines == [str(i) for i in range(3000)], lines[:5]


def test_output_of_several_threads_arrives_whole_and_in_order(gw: Gateway, sid: str) -> None:
    """Direct iopub sends (kernel_iopub.py) keep every thread's output whole and in its order,
    and the cell's own output before its result."""
    # one write per line (print writes the text and the newline apart: threads may interleave
    # between the two, in any Python)
    result = gw.execute(sid, "import sys, threading\n"
                             "def say(n):\n"
                             "    for i in range(300):\n"
                             "        sys.stdout.write(f't{n}-{i}\\n')\n"
                             "ts = [threading.Thread(target=say, args=(n,)) for n in range(4)]\n"
                             "for t in ts: t.start()\n"
                             "for i in range(300): sys.stdout.write(f'm-{i}\\n')\n"
                             "for t in ts: t.join()\n"
                             "print('end')\n7")
    assert result["status"] == "ok" and result["outputs"][-1]["data"]["text/plain"] == "7", result
    lines = result["stdout"].splitlines()
    assert lines[-1] == "end" and len(lines) == 5 * 300 + 1, len(lines)
    for who in ("t0", "t1", "t2", "t3", "m"):
        assert [x for x in lines if x.startswith(who + "-")] == \
            [f"{who}-{i}" for i in range(300)], who


def test_displays_sent_from_several_threads_at_once_all_arrive(gw: Gateway, sid: str) -> None:
    """Threads publishing on iopub themselves (``display``: no stream buffer in between) take
    the socket's lock in turn with the IOPub thread (kernel_iopub.py): nothing lost, each
    thread's messages in its order."""
    result = gw.execute(sid, "import threading\nfrom IPython.display import display\n"
                             "def show(n):\n"
                             "    for i in range(150):\n"
                             "        display(f'd{n}-{i}')\n"
                             "ts = [threading.Thread(target=show, args=(n,)) for n in range(4)]\n"
                             "for t in ts: t.start()\n"
                             "show(9)\n"
                             "for t in ts: t.join()")
    assert result["status"] == "ok", result
    shown = [o["data"]["text/plain"].strip("'") for o in result["outputs"]
             if o.get("type", o.get("output_type")) == "display_data"]
    assert len(shown) == 5 * 150, len(shown)
    for n in (0, 1, 2, 3, 9):
        assert [x for x in shown if x.startswith(f"d{n}-")] == \
            [f"d{n}-{i}" for i in range(150)], n
