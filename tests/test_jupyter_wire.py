"""gateway/jupyter.py: WebSocket framing (legacy and v1) and models, checked against
jupyter_server's own serializers; malformed client frames raise ValueError."""

from __future__ import annotations

import json
import re
import struct
from datetime import UTC, datetime
from typing import Any

import pytest
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

from gateway.jupyter import (
    from_legacy,
    from_v1,
    kernel_model,
    kernelspec,
    status_message,
    timestamp,
    to_legacy,
    to_v1,
)

BUFFER_SETS = pytest.mark.parametrize(
    "buffers", [[], [b""], [b"\x00\x01\xff"], [b"abc", bytes(range(256)) * 40, b""]],
    ids=["none", "empty", "one", "three"])
SESSION = Session(username="wire")


def kernel_msg(msg_type: str = "execute_request", buffers: list[bytes] | None = None
               ) -> dict[str, Any]:
    """A message as the gateway's KernelConnection hands it over (dates as datetimes)."""
    parent = SESSION.msg("execute_request", {"code": "x"})
    msg: dict[str, Any] = SESSION.msg(msg_type, {"code": "é ≠ 🐍", "n": [1, 2.5, None]},
                                      parent=parent["header"], metadata={"deep": {"a": True}})
    msg["buffers"] = [memoryview(b) for b in buffers or []]
    return msg


def plain(value: Any) -> Any:
    """JSON-normalised (datetimes become ISO strings), for comparing across a round trip."""
    return json.loads(json.dumps(value, default=lambda v: v.isoformat().replace("+00:00", "Z")))


def assert_same(msg: dict[str, Any], back: dict[str, Any]) -> None:
    for key in ("header", "parent_header", "metadata", "content"):
        assert plain(back[key]) == plain(msg[key]), key
    assert [bytes(b) for b in back["buffers"]] == [bytes(b) for b in msg["buffers"]]


def v1_frame(parts: list[bytes], offsets: list[int] | None = None,
             count: int | None = None) -> bytes:
    if offsets is None:
        offsets = [8 * (len(parts) + 2)]
        for part in parts:
            offsets.append(offsets[-1] + len(part))
    n = len(offsets) if count is None else count
    return b"".join(x.to_bytes(8, "little") for x in (n, *offsets)) + b"".join(parts)


def legacy_frame(parts: list[bytes], offsets: list[int] | None = None,
                 count: int | None = None) -> bytes:
    if offsets is None:
        offsets = [4 * (len(parts) + 1)]
        for part in parts[:-1]:
            offsets.append(offsets[-1] + len(part))
    n = len(parts) if count is None else count
    return struct.pack("!" + "I" * (len(offsets) + 1), n, *offsets) + b"".join(parts)


# ------------------------------------------------------------------ round trips
@BUFFER_SETS
def test_v1_round_trip(buffers: list[bytes]) -> None:
    msg = kernel_msg(buffers=buffers)
    frame = to_v1(msg, "shell")
    assert isinstance(frame, bytes)
    channel, back = from_v1(frame)
    assert channel == "shell"
    assert_same(msg, back)


@BUFFER_SETS
def test_legacy_round_trip(buffers: list[bytes]) -> None:
    msg = kernel_msg(buffers=buffers)
    frame = to_legacy(msg, "control")
    assert isinstance(frame, bytes if buffers else str)
    channel, back = from_legacy(frame)
    assert channel == "control"
    assert_same(msg, back)


@BUFFER_SETS
def test_v1_frames_read_by_jupyter_server(buffers: list[bytes]) -> None:
    msg = kernel_msg("comm_msg", buffers)
    channel, parts = deserialize_msg_from_ws_v1(to_v1(msg, "iopub"))
    assert channel == "iopub"
    assert [json.loads(p) for p in parts[:4]] == plain(
        [msg["header"], msg["parent_header"], msg["metadata"], msg["content"]])
    assert [bytes(p) for p in parts[4:]] == buffers


@BUFFER_SETS
def test_legacy_frames_read_by_jupyter_server(buffers: list[bytes]) -> None:
    msg = kernel_msg("comm_msg", buffers)
    frame = to_legacy(msg, "iopub")
    body = deserialize_binary_message(frame) if buffers else json.loads(frame)
    assert body["channel"] == "iopub"
    assert body["msg_id"] == msg["header"]["msg_id"]
    assert body["msg_type"] == "comm_msg"
    assert plain(body["content"]) == plain(msg["content"])
    assert plain(body["parent_header"])["msg_id"] == msg["parent_header"]["msg_id"]
    assert [bytes(b) for b in body.get("buffers", [])] == buffers


@BUFFER_SETS
def test_frames_made_by_jupyter_server_are_read(buffers: list[bytes]) -> None:
    msg = kernel_msg(buffers=buffers)
    packed = [json.dumps(plain(msg[k])).encode()
              for k in ("header", "parent_header", "metadata", "content")]
    channel, back = from_v1(serialize_msg_to_ws_v1([*packed, *buffers], "stdin"))
    assert channel == "stdin"
    assert_same(msg, back)
    body = {**plain({k: msg[k] for k in ("header", "parent_header", "metadata", "content")}),
            "channel": "shell", "buffers": buffers}
    channel, back = from_legacy(serialize_binary_message(body))
    assert channel == "shell"
    assert_same(msg, back)


def test_legacy_message_without_a_channel_goes_to_shell_as_in_jupyter_server() -> None:
    msg = plain(kernel_msg())
    channel, back = from_legacy(json.dumps(msg))
    assert channel == "shell"
    assert back["header"] == msg["header"]


def test_missing_parent_metadata_and_content_default_to_empty_objects() -> None:
    header = plain(kernel_msg())["header"]
    channel, back = from_legacy(json.dumps({"channel": "shell", "header": header}))
    assert channel == "shell"
    assert back["parent_header"] == back["metadata"] == back["content"] == {}
    assert back["buffers"] == []


def test_lone_surrogates_from_a_kernel_are_escaped_not_fatal() -> None:
    msg = kernel_msg("stream")
    msg["content"] = {"name": "stdout", "text": "a\ud800b"}
    legacy = to_legacy(msg, "iopub")
    assert isinstance(legacy, str)
    assert json.loads(legacy)["content"]["text"] == "a\ud800b"
    legacy.encode()  # a valid text frame
    _, parts = deserialize_msg_from_ws_v1(to_v1(msg, "iopub"))
    assert json.loads(parts[3])["text"] == "a\ud800b"


def test_non_ascii_text_is_sent_as_utf8_not_escaped() -> None:
    msg = kernel_msg("stream")
    frame = to_legacy(msg, "iopub")
    assert isinstance(frame, str) and "é ≠ 🐍" in frame


# ------------------------------------------------------------------ malformed frames
def good_parts() -> list[bytes]:
    msg = plain(kernel_msg())
    return [b"shell", *(json.dumps(msg[k]).encode()
                        for k in ("header", "parent_header", "metadata", "content"))]


def test_good_parts_are_accepted() -> None:
    assert from_v1(v1_frame(good_parts()))[0] == "shell"
    body = b'{"channel": "shell", "header": ' + good_parts()[1] + b"}"
    assert from_legacy(legacy_frame([body, b"buf"]))[1]["buffers"] == [b"buf"]


def _v1_malformed() -> list[tuple[str, Any]]:
    parts = good_parts()
    start = 8 * (len(parts) + 2)
    ends = [start]
    for part in parts:
        ends.append(ends[-1] + len(part))
    header = json.loads(parts[1])
    no_id = json.dumps({k: v for k, v in header.items() if k != "msg_id"}).encode()
    return [
        ("text", "not bytes"),
        ("empty", b""),
        ("short", b"\x06\x00\x00"),
        ("table longer than frame", (6).to_bytes(8, "little") + b"\x00" * 16),
        ("huge count", v1_frame(parts, count=10**6)),
        ("too few offsets", v1_frame(parts[:3])),
        ("offset inside the table", v1_frame(parts, [8, *ends[1:]])),
        ("offsets going back", v1_frame(parts, [ends[0], ends[2], ends[1], *ends[3:]])),
        ("offset past the end", v1_frame(parts, [*ends[:-1], ends[-1] + 1])),
        ("iopub channel", v1_frame([b"iopub", *parts[1:]])),
        ("hb channel", v1_frame([b"hb", *parts[1:]])),
        ("channel not utf-8", v1_frame([b"\xff\xfe", *parts[1:]])),
        ("header not json", v1_frame([b"shell", b"{nope", *parts[2:]])),
        ("header not an object", v1_frame([b"shell", b"[1]", *parts[2:]])),
        ("missing msg_id", v1_frame([b"shell", no_id, *parts[2:]])),
        ("msg_id not a string", v1_frame(
            [b"shell", json.dumps({**header, "msg_id": 5}).encode(), *parts[2:]])),
        ("content not an object", v1_frame([*parts[:4], b'"text"'])),
        ("metadata not an object", v1_frame([*parts[:3], b"[1]", parts[4]])),
        ("nested too deep", v1_frame([*parts[:4], b"[" * 100_000])),
    ]


def _legacy_malformed() -> list[tuple[str, Any]]:
    msg = plain(kernel_msg())
    body = {**msg, "channel": "shell"}
    raw = json.dumps(body).encode()
    no_id = {k: v for k, v in msg["header"].items() if k != "msg_id"}
    return [
        ("not json", "{nope"),
        ("not an object", "[1, 2]"),
        ("nested too deep", "[" * 100_000),
        ("iopub channel", json.dumps({**body, "channel": "iopub"})),
        ("empty channel", json.dumps({**body, "channel": ""})),
        ("missing header", json.dumps({"channel": "shell", "content": {}})),
        ("missing msg_id", json.dumps({**body, "header": no_id})),
        ("missing msg_type", json.dumps(
            {**body, "header": {k: v for k, v in msg["header"].items() if k != "msg_type"}})),
        ("msg_id not a string", json.dumps({**body, "header": {**msg["header"], "msg_id": 1}})),
        ("content not an object", json.dumps({**body, "content": [1]})),
        ("parent not an object", json.dumps({**body, "parent_header": "x"})),
        ("binary empty", b""),
        ("binary short", b"\x00\x00\x01"),
        ("binary zero count", struct.pack("!I", 0) + raw),
        ("binary table longer than frame", struct.pack("!II", 3, 16)),
        ("binary huge count", struct.pack("!I", 10**6) + b"\x00" * 64),
        ("binary offset inside the table", legacy_frame([raw, b"buf"], [4, 12 + len(raw)])),
        ("binary offsets going back", legacy_frame([raw, b"buf"], [12 + len(raw), 12])),
        ("binary offset past the end", legacy_frame([raw, b"buf"], [12, 12 + len(raw) + 10])),
        ("binary buffer offset past the end",
         legacy_frame([raw, b"abcd", b"efgh"], [16, 16 + len(raw), 16 + len(raw) + 100])),
        ("binary body not utf-8", legacy_frame([b"\xff\xfe", b"buf"])),
        ("binary body with an iopub channel",
         legacy_frame([json.dumps({**body, "channel": "iopub"}).encode(), b"buf"])),
    ]


@pytest.mark.parametrize("frame", [pytest.param(f, id=name) for name, f in _v1_malformed()])
def test_malformed_v1_frames_raise_value_error(frame: Any) -> None:
    with pytest.raises(ValueError):
        from_v1(frame)


@pytest.mark.parametrize("frame", [pytest.param(f, id=name) for name, f in _legacy_malformed()])
def test_malformed_legacy_frames_raise_value_error(frame: Any) -> None:
    with pytest.raises(ValueError):
        from_legacy(frame)


# ------------------------------------------------------------------ models
def test_timestamp_has_microseconds_and_z() -> None:
    value = datetime(2024, 2, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert timestamp(value) == "2024-02-03T04:05:06.000007Z"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", timestamp(datetime.now(UTC)))


def test_kernel_model_has_exactly_the_jupyter_keys() -> None:
    model = kernel_model("k", datetime(2024, 1, 1, tzinfo=UTC), "idle", 2)
    assert model == {"id": "k", "name": "python3",
                     "last_activity": "2024-01-01T00:00:00.000000Z",
                     "execution_state": "idle", "connections": 2}


def test_kernelspec_is_a_python3_spec() -> None:
    spec = kernelspec()
    assert spec["name"] == "python3"
    assert {"argv", "display_name", "language", "metadata"} <= set(spec["spec"])
    json.dumps(spec)


@pytest.mark.parametrize("state", ["restarting", "dead"])
def test_status_message_looks_like_a_kernel_status(state: str) -> None:
    msg = status_message(state)
    assert msg["content"] == {"execution_state": state}
    assert msg["header"]["msg_type"] == "status"
    legacy = json.loads(to_legacy(msg, "iopub"))
    assert (legacy["channel"], legacy["msg_type"]) == ("iopub", "status")
    assert legacy["content"] == {"execution_state": state}
    channel, parts = deserialize_msg_from_ws_v1(to_v1(msg, "iopub"))
    assert channel == "iopub" and json.loads(parts[0])["msg_type"] == "status"
