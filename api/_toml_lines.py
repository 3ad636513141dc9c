"""Where each key of a TOML file is written, so that a configuration error can name its
line: ``tomllib`` gives values, not positions.

This is a scan of lines, not a second parser: it follows ``[table]`` and ``[[table]]``
headers and ``key = value`` assignments (bare, quoted and dotted keys), and skips over
values, strings and comments, including arrays and strings that span lines. It runs only
on text that ``tomllib`` has accepted, so it need not diagnose anything. A key inside an
inline table (``config = { region = "x" }``) is on the line of the assignment that holds
it, which is what :func:`line_of` answers for it.
"""

from __future__ import annotations

import re
import tomllib

Key = tuple[str, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def key_lines(text: str) -> dict[Key, int]:
    """The line (from 1) where each table and key of ``text`` is defined.

    A header ``[a.b]`` defines ``("a", "b")`` and, unless they are defined elsewhere,
    ``("a",)``; an assignment ``c.d = 1`` under it defines ``("a", "b", "c", "d")`` and
    ``("a", "b", "c")``. The first definition wins.
    """
    explicit: dict[Key, int] = {}
    implicit: dict[Key, int] = {}
    table: Key = ()
    string: str | None = None  # the delimiter of a multi-line string still open
    depth = 0  # brackets and braces still open in a value that spans lines
    for number, line in enumerate(text.split("\n"), start=1):
        if string is not None or depth:
            string, depth = _skip_value(line, 0, string, depth)
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            opening = 2 if stripped.startswith("[[") else 1
            parsed = _parse_key(stripped, opening)
            if parsed is not None:
                table = parsed[0]
                explicit.setdefault(table, number)
                for end in range(1, len(table)):
                    implicit.setdefault(table[:end], number)
            continue
        parsed = _parse_key(stripped, 0)
        if parsed is None or not stripped.startswith("=", parsed[1]):
            continue
        key, end = parsed
        full = table + key
        explicit.setdefault(full, number)
        for stop in range(len(table) + 1, len(full)):
            implicit.setdefault(full[:stop], number)
        string, depth = _skip_value(stripped, end + 1, None, 0)
    return implicit | explicit


def line_of(lines: dict[Key, int], key: Key) -> int | None:
    """The line of ``key``, else of the nearest enclosing key or table that has one."""
    for end in range(len(key), 0, -1):
        if key[:end] in lines:
            return lines[key[:end]]
    return None


def _parse_key(text: str, index: int) -> tuple[Key, int] | None:
    """A dotted key starting at ``index``: its parts and the index after it (and after
    the blanks that follow it); None when there is no key there."""
    parts: list[str] = []
    while True:
        index = _skip_blanks(text, index)
        if index >= len(text):
            return None
        if text[index] in "\"'":
            end = _string_end(text, index)
            if end is None:
                return None
            try:
                parts.append(tomllib.loads(f"k = {text[index:end]}")["k"])
            except tomllib.TOMLDecodeError:
                return None
            index = end
        else:
            match = _BARE.match(text, index)
            if match is None:
                return None
            parts.append(match.group())
            index = match.end()
        index = _skip_blanks(text, index)
        if not text.startswith(".", index):
            return tuple(parts), index
        index += 1


def _skip_blanks(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t":
        index += 1
    return index


def _string_end(text: str, index: int) -> int | None:
    """The index after the one-line string that opens at ``index``."""
    quote = text[index]
    position = index + 1
    while position < len(text):
        char = text[position]
        if char == "\\" and quote == '"':
            position += 2
            continue
        if char == quote:
            return position + 1
        position += 1
    return None


def _skip_value(text: str, index: int, string: str | None, depth: int) -> tuple[str | None, int]:
    """Read a value's text from ``index`` to the end of the line; return the multi-line
    string still open (its delimiter) and the brackets still open."""
    while index < len(text):
        if string is not None:
            if text[index] == "\\" and string == '"""':
                index += 2
                continue
            if text.startswith(string, index):
                index += 3
                # A closing delimiter may be followed by up to two more quotes.
                while index < len(text) and text[index] == string[0]:
                    index += 1
                string = None
                continue
            index += 1
            continue
        char = text[index]
        if char == "#":
            break
        if text.startswith(('"""', "'''"), index):
            string = text[index : index + 3]
            index += 3
        elif char in "\"'":
            index = _string_end(text, index) or len(text)
        else:
            if char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
            index += 1
    return string, depth
