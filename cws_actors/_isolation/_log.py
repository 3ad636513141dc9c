"""A subprocess plugin's stderr, turned into log records the daemon can afford.

A plugin can write anything to its stderr: gigabytes with no newline, or a million
lines a second. Neither may cost the daemon memory or drown its log, so a line is cut
at :data:`MAX_LINE` bytes (the rest of it is dropped, and the record says so), and the
records of one plugin are rate-limited by a token bucket; what the bucket refuses is
counted and reported in one record when it admits lines again (or at the end).
"""

from __future__ import annotations

import logging

import attrs

from .._core._ratelimit import TokenBucket

MAX_LINE = 8 * 1024
"""Bytes of one stderr line that reach the log; the rest is dropped."""
TRUNCATED = " [line truncated]"
LINE_RATE = 50.0
"""Log records a second per plugin, on average..."""
LINE_BURST = 500
"""...and at once."""


@attrs.define(eq=False)
class StderrLog:
    """Feed it the chunks read from a plugin's stderr; :meth:`close` at the end."""

    logger: logging.Logger
    rate: float = LINE_RATE
    burst: int = LINE_BURST
    suppressed: int = 0
    """Lines the bucket refused since the last record that reported them."""
    _pending: bytearray = attrs.field(factory=bytearray, init=False)
    _skipping: bool = attrs.field(default=False, init=False)
    """Inside a line that was cut already: drop bytes until its newline."""
    _bucket: TokenBucket = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._bucket = TokenBucket(self.rate, self.burst)

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for a newline (never more than ``MAX_LINE``)."""
        return len(self._pending)

    def feed(self, chunk: bytes | bytearray) -> None:
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            if self._skipping:
                self._skipping = False
            else:
                room = MAX_LINE - len(self._pending)
                self._pending += chunk[start : start + min(newline - start, room + 1)]
                self._emit_pending()
            start = newline + 1
        if self._skipping:
            return
        self._pending += chunk[start : start + MAX_LINE + 1 - len(self._pending)]
        if len(self._pending) > MAX_LINE:
            self._emit_pending()
            self._skipping = True

    def close(self) -> None:
        if self._pending and not self._skipping:
            self._emit_pending()
        self._pending.clear()
        if self.suppressed:
            self._report_suppressed()

    def _emit_pending(self) -> None:
        cut = len(self._pending) > MAX_LINE
        text = self._pending[:MAX_LINE].decode(errors="replace")
        self._pending.clear()
        if self._bucket.take() > 0.0:
            self.suppressed += 1
            return
        if self.suppressed:
            self._report_suppressed()
        self.logger.warning("%s%s", text, TRUNCATED if cut else "")

    def _report_suppressed(self) -> None:
        self.logger.warning(
            "%d lines suppressed (over %g lines a second)", self.suppressed, self.rate
        )
        self.suppressed = 0
