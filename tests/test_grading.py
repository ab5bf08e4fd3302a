"""Grading: compare modes, the regex deadline, JSON equality and short diffs."""

from __future__ import annotations

import time

import pytest

from gateway import errors, grading


@pytest.mark.parametrize(("mode", "actual", "expected", "same"), [
    ("exact", "8\n", "8\n", True), ("exact", "8\n", "8", False),
    ("strip", "a \nb\n\n", "a\nb", True), ("strip", " a", "a", False),
    ("strip", "12", "2", False),
    ("whitespace", "a \t b\n\nc ", "a b c", True), ("whitespace", "ab", "a b", False),
    ("regex", "total: 42\n", r"total: \d+", True), ("regex", "total: 42 kg", r"total: \d+", False),
    ("regex", "a\nb\n", r"a.b", True),
])
async def test_compare_modes(mode: str, actual: str, expected: str, same: bool) -> None:
    assert await grading.stdout_matches(actual, expected, mode) is same


async def test_a_catastrophic_regex_times_out_without_blocking_the_gateway() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await grading.stdout_matches("a" * 40 + "b", r"(a+)+c", "regex")
    assert time.monotonic() - started < grading.REGEX_DEADLINE_S + 3


def test_invalid_pattern_is_a_validation_error() -> None:
    with pytest.raises(errors.ValidationFailed):
        grading.check_pattern("(")


def test_json_equality_is_typed() -> None:
    assert grading.same_json({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not grading.same_json(True, 1) and not grading.same_json(0, False)
    assert not grading.same_json({"a": 1}, {"a": 1, "b": 2})
    assert not grading.same_json("1", 1) and grading.same_json(None, None)


def test_short_diff_is_short_and_shows_invisible_differences() -> None:
    diff = grading.short_diff("3", "2\n")
    assert diff == "--- expected\n+++ actual\n@@ -1 +1 @@\n-3\n+2"
    assert "'8\\n'" in grading.short_diff("8\n", "8")
    long = grading.short_diff("\n".join(map(str, range(500))), "\n".join(map(str, range(1, 501))))
    assert len(long.splitlines()) <= grading.MAX_DIFF_LINES + 1
