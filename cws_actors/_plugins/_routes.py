"""Whether two route patterns could answer one path, compared segment by segment.

Plugin paths name their parameters ``{name}``; the daemon's own (werkzeug) rules name
them ``<name>`` or ``<converter:name>``, and ``<path:name>`` takes the rest of the path
(one segment or more). A segment that is a parameter, or holds one (``{id}.json``),
matches any literal its pattern matches and any other parameter.
"""

from __future__ import annotations

import re

_PARAM = re.compile(r"\{[a-zA-Z_][a-zA-Z0-9_]*\}|<(?:[a-z_]+:)?[a-zA-Z_][a-zA-Z0-9_]*>")
_REST = re.compile(r"<path:[a-zA-Z_][a-zA-Z0-9_]*>")


def _segments(path: str) -> list[str]:
    stripped = path.strip("/")
    return stripped.split("/") if stripped else []


def _segment_regex(segment: str) -> re.Pattern[str]:
    parts = _PARAM.split(segment)
    return re.compile("[^/]+".join(re.escape(part) for part in parts))


def _segments_overlap(ours: str, theirs: str) -> bool:
    ours_literal, theirs_literal = not _PARAM.search(ours), not _PARAM.search(theirs)
    if ours_literal and theirs_literal:
        return ours == theirs
    if ours_literal:
        return _segment_regex(theirs).fullmatch(ours) is not None
    if theirs_literal:
        return _segment_regex(ours).fullmatch(theirs) is not None
    return True  # two patterns: some value could satisfy both (erring on refusal)


def routes_overlap(first: str, second: str) -> bool:
    """Whether some request path matches both route patterns ``first`` and ``second``
    (``/api/v1/analytics/{x}`` and ``/api/v1/analytics/costs`` do; ``/a/{x}`` and
    ``/a/{x}/b`` do not)."""
    ours, theirs = _segments(first), _segments(second)
    for mine, other in zip(ours, theirs, strict=False):
        if _REST.fullmatch(mine) or _REST.fullmatch(other):
            return True
        if not _segments_overlap(mine, other):
            return False
    return len(ours) == len(theirs)
