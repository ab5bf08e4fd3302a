"""gateway/events.py: iopub → WebSocket events, the bounded replay log, subscribers."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.events import Event, EventLog, event_from_iopub


# ------------------------------------------------------------------ event_from_iopub
def test_stream_becomes_a_stream_event() -> None:
    event = event_from_iopub("stream", {"name": "stderr", "text": "oops\n"}, 100)
    assert event == {"type": "stream", "name": "stderr", "text": "oops\n"}


def test_long_stream_text_is_cut_and_says_so() -> None:
    event = event_from_iopub("stream", {"name": "stdout", "text": "x" * 50}, 10)
    assert event == {"type": "stream", "name": "stdout", "text": "x" * 10, "truncated": True}


def test_display_data_keeps_data_metadata_and_display_id() -> None:
    content = {"data": {"text/plain": "fig", "image/png": "iVBO"}, "metadata": {"w": 1},
               "transient": {"display_id": "d1"}}
    event = event_from_iopub("display_data", content, 1000)
    assert event == {"type": "display_data", "data": content["data"], "metadata": {"w": 1},
                     "display_id": "d1"}


def test_execute_result_carries_its_execution_count() -> None:
    event = event_from_iopub("execute_result",
                             {"data": {"text/plain": "42"}, "execution_count": 3}, 1000)
    assert event is not None and event["execution_count"] == 3 and event["metadata"] == {}


@pytest.mark.parametrize("value", ["p" * 5000, {"rows": ["p" * 100] * 50}])
def test_oversized_rich_output_is_replaced_by_a_placeholder(value: Any) -> None:
    mime = "text/html" if isinstance(value, str) else "application/json"
    event = event_from_iopub("display_data", {"data": {mime: value}}, 1000)
    assert event is not None and event["truncated"] is True
    assert event["data"] == {"text/plain": "<output too large to stream>"}


def test_error_event_keeps_name_value_and_traceback() -> None:
    content = {"ename": "ValueError", "evalue": "bad", "traceback": ["line 1", "line 2"]}
    event = event_from_iopub("error", content, 1000)
    assert event == {"type": "error", "ename": "ValueError", "evalue": "bad",
                     "traceback": ["line 1", "line 2"]}


def test_error_event_is_bounded_however_large_the_exception() -> None:
    # str(exc) of a huge exception is repeated in the traceback: both are bounded
    huge = "v" * 1_000_000
    content = {"ename": "E" * 5000, "evalue": huge, "traceback": [huge] * 300}
    event = event_from_iopub("error", content, 10_000)
    assert event is not None and event["truncated"] is True
    assert len(event["evalue"]) == 10_000 and len(event["ename"]) <= 1000
    assert sum(len(line) for line in event["traceback"]) <= 10_000


def test_long_traceback_keeps_at_most_200_lines() -> None:
    event = event_from_iopub("error", {"ename": "E", "evalue": "", "traceback": ["x"] * 500},
                             10_000)
    assert event is not None and len(event["traceback"]) == 200 and event["truncated"] is True


def test_clear_output_and_update_display_data() -> None:
    assert event_from_iopub("clear_output", {"wait": True}, 10) == {"type": "clear_output",
                                                                   "wait": True}
    event = event_from_iopub("update_display_data",
                             {"data": {"text/plain": "2"}, "transient": {"display_id": "d"}}, 99)
    assert event is not None and event["type"] == "update_display_data"
    assert event["display_id"] == "d"


@pytest.mark.parametrize("msg_type", ["status", "execute_input", "comm_open", "shutdown_reply"])
def test_kernel_bookkeeping_is_not_an_event(msg_type: str) -> None:
    assert event_from_iopub(msg_type, {"execution_state": "busy"}, 100) is None


# ------------------------------------------------------------------ EventLog
def stream(text: str = "x") -> Event:
    return {"type": "stream", "name": "stdout", "text": text}


def test_publish_numbers_events_from_one() -> None:
    log = EventLog(max_events=10, max_bytes=10_000)
    assert [log.publish(stream())["seq"] for _ in range(3)] == [1, 2, 3]
    assert log.seq == 3


def test_replay_gives_exactly_the_events_after_since() -> None:
    log = EventLog(max_events=10, max_bytes=10_000)
    for i in range(5):
        log.publish(stream(str(i)))
    events, gap = log.replay(2)
    assert [e["seq"] for e in events] == [3, 4, 5] and gap is None
    assert log.replay(5) == ([], None)
    assert [e["seq"] for e in log.replay(0)[0]] == [1, 2, 3, 4, 5]


def test_log_keeps_at_most_max_events_and_replay_reports_the_gap() -> None:
    log = EventLog(max_events=3, max_bytes=10_000)
    for _ in range(10):
        log.publish(stream())
    events, gap = log.replay(2)
    assert [e["seq"] for e in events] == [8, 9, 10]
    assert gap is not None and gap["type"] == "gap"
    assert (gap["from_seq"], gap["to_seq"]) == (3, 7)
    assert log.replay(7)[1] is None  # nothing missing right at the edge


def test_log_keeps_at_most_max_bytes() -> None:
    log = EventLog(max_events=1000, max_bytes=5_000)
    for _ in range(10):
        log.publish(stream("y" * 1000))
    events, gap = log.replay(0)
    assert 1 <= len(events) <= 5 and events[-1]["seq"] == 10
    assert gap is not None and gap["to_seq"] == events[0]["seq"] - 1


def test_large_results_and_tracebacks_count_against_max_bytes() -> None:
    # a result event carries a whole ExecuteResult: it must not count as a small event
    log = EventLog(max_events=1000, max_bytes=100_000)
    for _ in range(10):
        log.publish({"type": "result", "id": "r", "result": {"stdout": "z" * 40_000,
                                                              "outputs": []}})
    assert len(log.replay(0)[0]) <= 2
    log = EventLog(max_events=1000, max_bytes=100_000)
    for _ in range(10):
        log.publish({"type": "error", "ename": "E", "evalue": "", "traceback": ["t" * 40_000]})
    assert len(log.replay(0)[0]) <= 2


def test_an_empty_log_still_reports_a_gap() -> None:
    log = EventLog(max_events=0, max_bytes=10_000)
    for _ in range(4):
        log.publish(stream())
    assert log.replay(1) == ([], {"type": "gap", "from_seq": 2, "to_seq": 4,
                                  "message": "events 2..4 are no longer kept"})


def test_every_subscriber_gets_every_event_even_if_one_fails() -> None:
    log = EventLog(max_events=10, max_bytes=10_000)
    seen: list[int] = []

    def broken(event: Event) -> None:
        raise RuntimeError("watcher bug")

    log.subscribe(broken)
    log.subscribe(lambda e: seen.append(e["seq"]))
    assert log.watchers == 2
    log.publish(stream())
    log.publish(stream())
    assert seen == [1, 2]
    log.unsubscribe(broken)
    log.unsubscribe(broken)  # twice is harmless
    assert log.watchers == 1


def test_a_subscriber_may_unsubscribe_while_being_called() -> None:
    log = EventLog(max_events=10, max_bytes=10_000)
    calls: list[str] = []

    def once(event: Event) -> None:
        calls.append("once")
        log.unsubscribe(once)

    log.subscribe(once)
    log.subscribe(lambda e: calls.append("always"))
    log.publish(stream())
    log.publish(stream())
    assert calls == ["once", "always", "always"]
