"""WireCodec: what a kernel sends is checked (signature, size, depth, shape) before anything
reads it, and a Jupyter client gets a kernel's JSON parts exactly as they came."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from jupyter_client.session import Session

from gateway.jupyter import to_legacy, to_v1
from gateway.wire import Rejected, WireCodec


def codec(max_bytes: int = 1 << 20) -> tuple[WireCodec, Session]:
    key = secrets.token_hex(32).encode()
    ours = Session(key=key, signature_scheme="hmac-sha256", username="gateway")
    kernel = Session(key=key, signature_scheme="hmac-sha256", username="kernel")
    return WireCodec(ours, max_bytes), kernel


def signed(kernel: Session, parts: list[bytes], topic: bytes = b"kernel.iopub") -> list[bytes]:
    """Frames as a kernel's PUB socket sends them: topic, delimiter, signature, four parts."""
    return [topic, b"<IDS|MSG>", kernel.sign(parts), *parts]


def kernel_parts(kernel: Session, content: Any, msg_type: str = "stream") -> list[bytes]:
    msg = kernel.msg(msg_type, content, parent={"msg_id": "parent-1"})
    return kernel.serialize(msg)[2:6]


def test_a_signed_message_is_decoded_for_routing() -> None:
    wire, kernel = codec()
    msg = wire.decode(signed(kernel, kernel_parts(kernel, {"name": "stdout", "text": "hi"})))
    assert (msg["msg_type"], msg["parent_header"]["msg_id"]) == ("stream", "parent-1")
    assert msg["content"] == {"name": "stdout", "text": "hi"}
    assert msg["content_bytes"] == len(json.dumps({"name": "stdout", "text": "hi"},
                                                  ensure_ascii=False).encode())


def test_a_forged_signature_is_refused() -> None:
    wire, kernel = codec()
    frames = signed(kernel, kernel_parts(kernel, {"text": "x"}))
    frames[2] = b"0" * 64
    with pytest.raises(ValueError, match="signature"):
        wire.decode(frames)
    other, _ = codec()  # another kernel's key
    with pytest.raises(ValueError, match="signature"):
        other.decode(signed(kernel, kernel_parts(kernel, {"text": "x"})))


def test_a_changed_part_is_refused() -> None:
    wire, kernel = codec()
    frames = signed(kernel, kernel_parts(kernel, {"text": "x"}))
    frames[-1] = b'{"text": "y"}'
    with pytest.raises(ValueError, match="signature"):
        wire.decode(frames)


@pytest.mark.parametrize("content, reason", [
    (b'{"a": ' * 70 + b"1" + b"}" * 70, "too_deep"),
    (b"[" * 70 + b"]" * 70, "malformed"),  # (not an object, whatever its depth)
    (b'"text"', "malformed"),
])
def test_refused_shapes_carry_their_reason(content: bytes, reason: str) -> None:
    wire, kernel = codec()
    parts = kernel_parts(kernel, {})
    parts[3] = content
    with pytest.raises(Rejected) as refused:
        wire.decode(signed(kernel, parts))
    assert refused.value.args[0] == reason


def test_brackets_inside_strings_do_not_make_a_message_too_deep() -> None:
    wire, kernel = codec()
    text = "[" * 500 + "{" * 500
    msg = wire.decode(signed(kernel, kernel_parts(kernel, {"name": "stdout", "text": text})))
    assert msg["content"]["text"] == text


@pytest.mark.parametrize("bad", [b'{"a": 1} x', b"", b" {}", b"{'a': 1}", b"\xff{}"])
def test_parts_that_are_not_exactly_one_json_object_are_refused(bad: bytes) -> None:
    wire, kernel = codec()
    parts = kernel_parts(kernel, {})
    parts[3] = bad
    with pytest.raises(ValueError):
        wire.decode(signed(kernel, parts))


def test_a_message_over_the_limit_is_refused_before_it_is_read() -> None:
    wire, kernel = codec(max_bytes=10_000)
    with pytest.raises(Rejected) as refused:
        wire.decode(signed(kernel, kernel_parts(kernel, {"text": "x" * 20_000})))
    assert refused.value.args[0] == "too_large"


@pytest.mark.parametrize("frames", [[], [b"<IDS|MSG>", b"sig", b"{}"], [b"no delimiter"] * 6])
def test_short_or_undelimited_frames_are_refused(frames: list[bytes]) -> None:
    wire, _ = codec()
    with pytest.raises(ValueError):
        wire.decode(frames)


def test_jupyter_clients_get_the_kernels_own_json_parts() -> None:
    wire, kernel = codec()
    parts = kernel_parts(kernel, {"name": "stdout", "text": "é ≠ 🐍"})
    msg = wire.decode(signed(kernel, parts))
    frame = to_v1(msg, "iopub")
    assert all(part in frame for part in parts)
    legacy = to_legacy(msg, "iopub")
    assert isinstance(legacy, str)
    body = json.loads(legacy)
    assert body["content"]["text"] == "é ≠ 🐍"
    assert (body["channel"], body["msg_type"]) == ("iopub", "stream")
    assert body["msg_id"] == msg["msg_id"]
    assert body["parent_header"] == {"msg_id": "parent-1"}


def test_encoded_lone_surrogates_are_read_and_sent_on_as_valid_utf8() -> None:
    wire, kernel = codec()
    parts = kernel_parts(kernel, {})
    parts[3] = '{"name": "stdout", "text": "a\ud800b"}'.encode("utf-8", "surrogatepass")
    msg = wire.decode(signed(kernel, parts))
    assert msg["content"]["text"] == "a\ud800b" and msg["wire"] is None
    legacy = to_legacy(msg, "iopub")
    assert isinstance(legacy, str)
    legacy.encode()  # a valid text frame
    assert json.loads(legacy)["content"]["text"] == "a\ud800b"
