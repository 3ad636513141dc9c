"""Fault targets: an actor path or a glob over paths (``*``, ``?``, ``[...]`` within one
segment, ``**`` across segments), compiled to a predicate on paths.

A glob is matched without backtracking: segment by segment, and within a segment
character by character, each step advancing the set of pattern positions still alive
(a Thompson simulation). A match costs at most (path length) x (pattern length) steps,
whatever the pattern: a regular expression translated from ``/***...*`` backtracks
exponentially instead. The target's length and its number of segments are bounded
(:data:`MAX_TARGET_LENGTH`, :data:`MAX_TARGET_SEGMENTS`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence

import attrs

from ._exceptions import FaultTargetError

MAX_TARGET_LENGTH = 512
"""The longest fault target, in characters."""
MAX_TARGET_SEGMENTS = 32
"""The most ``/``-separated segments in a fault target."""

_STAR = "*"
_ANY = "?"
_SEGMENTS = "**"


@attrs.frozen
class _CharClass:
    """``[...]`` or ``[!...]``: exactly one character, as fnmatch reads the brackets."""

    regex: re.Pattern[str]

    def accepts(self, char: str) -> bool:
        return self.regex.match(char) is not None


_Token = str | _CharClass
"""One step of a segment glob: ``*`` (any run), ``?`` (any one character), a class, or
a literal character."""


def compile_target(target: str) -> Callable[[str], bool]:
    """A predicate on actor paths for a fault target (a path or a glob).

    Raises:
        FaultTargetError: not a string starting with '/', or longer than
            :data:`MAX_TARGET_LENGTH` characters or :data:`MAX_TARGET_SEGMENTS` segments.
    """
    if not isinstance(target, str) or not target.startswith("/"):
        raise FaultTargetError(
            "a fault target is an actor path or a glob starting with '/', such as"
            f" '/plugins/aws' or '/plugins/*', got {target!r}"
        )
    if len(target) > MAX_TARGET_LENGTH:
        raise FaultTargetError(
            f"a fault target is at most {MAX_TARGET_LENGTH} characters, got one of"
            f" {len(target)} starting {target[:40]!r}"
        )
    segments = target[1:].split("/")
    if len(segments) > MAX_TARGET_SEGMENTS:
        raise FaultTargetError(
            f"a fault target has at most {MAX_TARGET_SEGMENTS} segments, got"
            f" {len(segments)} in {target[:40]!r}..."
        )
    if not any(char in target for char in "*?["):
        return target.__eq__
    pattern = [_SEGMENTS if s == _SEGMENTS else _segment_tokens(s) for s in segments]
    return lambda path: _path_matches(pattern, path)


def _segment_tokens(segment: str) -> tuple[_Token, ...]:
    """The steps of one segment's glob; a run of ``*`` is one step."""
    tokens: list[_Token] = []
    index = 0
    while index < len(segment):
        char = segment[index]
        if char == "[":
            end = _class_end(segment, index)
            if end is not None:
                # fnmatch translates a bracket expression to a one-character class: no
                # repetition in it, so it cannot backtrack.
                tokens.append(_CharClass(re.compile(fnmatch.translate(segment[index : end + 1]))))
                index = end + 1
                continue
            tokens.append("[")  # no closing bracket: a literal, as in fnmatch
        elif char == _STAR:
            if not tokens or tokens[-1] != _STAR:
                tokens.append(_STAR)
        else:
            tokens.append(char)
        index += 1
    return tuple(tokens)


def _class_end(segment: str, start: int) -> int | None:
    """The index of the ``]`` closing the class opened at ``start``, or None (fnmatch's
    rule: a ``]`` right after ``[`` or ``[!`` belongs to the class)."""
    index = start + 1
    if index < len(segment) and segment[index] == "!":
        index += 1
    if index < len(segment) and segment[index] == "]":
        index += 1
    end = segment.find("]", index)
    return end if end >= 0 else None


def _segment_matches(tokens: tuple[_Token, ...], text: str) -> bool:
    """Does one path segment match one segment's glob? Linear in ``len(text)``."""
    alive = _skip_stars(tokens, {0})
    for char in text:
        step: set[int] = set()
        for position in alive:
            if position == len(tokens):
                continue
            token = tokens[position]
            if token == _STAR:
                step.add(position)  # the run goes on
            elif _steps_over(token, char):
                step.add(position + 1)
        if not step:
            return False
        alive = _skip_stars(tokens, step)
    return len(tokens) in alive


def _steps_over(token: _Token, char: str) -> bool:
    """Does ``token`` (not ``*``) take ``char``?"""
    if isinstance(token, _CharClass):
        return token.accepts(char)
    return token in (_ANY, char)


def _skip_stars(tokens: tuple[_Token, ...], alive: set[int]) -> set[int]:
    """``alive`` and, past each ``*``, the position after it (the run may be empty)."""
    return alive | {p + 1 for p in alive if p < len(tokens) and tokens[p] == _STAR}


def _path_matches(pattern: Sequence[str | tuple[_Token, ...]], path: str) -> bool:
    """Does ``path`` match the target's segments? ``**`` takes any number of non-empty
    path segments, zero included."""
    if not path.startswith("/"):
        return False
    alive = _skip_globstars(pattern, {0})
    for segment in path[1:].split("/"):
        step: set[int] = set()
        for position in alive:
            if position == len(pattern):
                continue
            glob = pattern[position]
            if glob == _SEGMENTS:
                if segment:
                    step.add(position)
            elif isinstance(glob, tuple) and _segment_matches(glob, segment):
                step.add(position + 1)
        if not step:
            return False
        alive = _skip_globstars(pattern, step)
    return len(pattern) in alive


def _skip_globstars(pattern: Sequence[str | tuple[_Token, ...]], alive: set[int]) -> set[int]:
    """``alive`` and, past each ``**``, the position after it (it may take no segment)."""
    more = set(alive)
    for position in sorted(alive):
        while position < len(pattern) and pattern[position] == _SEGMENTS:
            position += 1
            more.add(position)
    return more
