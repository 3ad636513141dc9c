"""Fault targets match as fnmatch reads each segment, with ``**`` across segments, and
in time linear in the path whatever the pattern."""

from __future__ import annotations

import fnmatch
import random

import pytest

from cws_actors.faults import FaultTargetError, compile_target


def test_each_segment_matches_as_fnmatch_does() -> None:
    rng = random.Random(16)
    for _ in range(5000):
        glob = "".join(rng.choice("ab*?[]!-") for _ in range(rng.randint(1, 8)))
        name = "".join(rng.choice("ab[]!-") for _ in range(rng.randint(1, 4)))
        expected = fnmatch.fnmatchcase(name, glob)
        assert compile_target(f"/p/{glob}")(f"/p/{name}") is expected, (glob, name)


@pytest.mark.parametrize(
    ("target", "path", "expected"),
    [
        ("/**", "/plugins/web", True),
        ("/**/web", "/web", True),
        ("/**/web", "/plugins/x/web", True),
        ("/plugins/**", "/plugins", True),
        ("/plugins/*", "/plugins/web/child", False),
        ("/plugins/*", "/plugins", False),
        ("/**/web", "/plugins//web", False),  # '**' takes no empty segment
        ("/" + "*" * 500, "/plugins", True),
        ("/" + "*a" * 200, "/" + "a" * 5000, True),
    ],
)
def test_globs_across_segments(target: str, path: str, expected: bool) -> None:
    assert compile_target(target)(path) is expected


def test_a_target_is_bounded() -> None:
    with pytest.raises(FaultTargetError, match="at most 512 characters, got one of 513"):
        compile_target("/" + "*" * 512)
    with pytest.raises(FaultTargetError, match="at most 32 segments, got 33"):
        compile_target("/a" * 33)
