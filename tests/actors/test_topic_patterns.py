"""Topic patterns: '*' one word, '#' any number (zero included), matched without
recursion, and bounded in size."""

from __future__ import annotations

import pytest
import trio

from cws_actors import EventBus, check_topic, topic_matches


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("#", "a", True),
        ("a.#", "a", True),
        ("a.#.z", "a.b.c.z", True),
        ("#.z", "a.b", False),
        ("*.b", "a.b", True),
        ("*.b", "b", False),
        ("#.#.#", "a", True),
        (".".join(["#"] * 31 + ["z"]), ".".join(["a"] * 31 + ["y"]), False),
    ],
)
def test_patterns_match_as_documented(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


def test_patterns_and_topics_are_bounded() -> None:
    with pytest.raises(ValueError, match="at most 32 dot-separated segments, got 33"):
        topic_matches(".".join(["#"] * 33), "a")
    with pytest.raises(ValueError, match="a topic name is at most 255 characters"):
        check_topic("a" * 256)


async def test_a_subscriber_with_the_worst_pattern_never_fails_a_publish() -> None:
    dropped: list[str] = []
    bus = EventBus(lambda path, event: None, lambda event, reason: dropped.append(reason))
    worst = ".".join(["#"] * 31 + ["z"])
    with bus.subscribe(worst, buffer=0) as subscription:
        for word in ("y", "z"):
            await bus.publish(".".join(["a"] * 31 + [word]))
        with trio.fail_after(1):
            assert (await subscription.receive()).topic.endswith(".z")
    assert dropped == []
