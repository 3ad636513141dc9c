"""Fault targets: an actor path or a glob over paths (``*``, ``?``, ``[...]`` within one
segment, ``**`` across segments), compiled to a predicate on paths."""

from __future__ import annotations

import re
from collections.abc import Callable

from ._exceptions import FaultTargetError


def compile_target(target: str) -> Callable[[str], bool]:
    """A predicate on actor paths for a fault target (a path or a glob).

    Raises:
        FaultTargetError: not a string starting with '/'.
    """
    if not isinstance(target, str) or not target.startswith("/"):
        raise FaultTargetError(
            "a fault target is an actor path or a glob starting with '/', such as"
            f" '/plugins/aws' or '/plugins/*', got {target!r}"
        )
    if not any(char in target for char in "*?["):
        return target.__eq__
    pattern = ""
    for segment in target[1:].split("/"):
        pattern += "(?:/[^/]+)*" if segment == "**" else "/" + _segment_regex(segment)
    compiled = re.compile(pattern)
    return lambda path: compiled.fullmatch(path) is not None


def _segment_regex(segment: str) -> str:
    out, index = "", 0
    while index < len(segment):
        char = segment[index]
        index += 1
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[" and "]" in segment[index + 1 :]:
            end = segment.index("]", index + 1)
            body = segment[index:end]
            out += "[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\")
            out += "]"
            index = end + 1
        else:
            out += re.escape(char)
    return out
