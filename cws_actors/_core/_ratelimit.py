"""Per-actor rate limits: a token bucket per source, on Trio's clock."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

import attrs
import trio

K = TypeVar("K", bound=Hashable)

# Refill arithmetic is in floats; a token that is 1e-9 short is still a token, so that
# rate * t + burst messages are admitted over t seconds, not one fewer.
_EPSILON = 1e-9


_v = attrs.validators
_positive_number = _v.and_(_v.instance_of((int, float)), _v.gt(0.0))
_count = _v.and_(_v.instance_of(int), _v.ge(1))


@attrs.frozen
class RateLimit:
    """At most ``rate`` messages a second on average and ``burst`` at once, per source
    (``http``, ``cli``, ``bus``...) unless ``per_source`` is False; and at most
    ``max_concurrent`` messages admitted but not yet handled."""

    rate: float = attrs.field(validator=_positive_number)
    burst: int = attrs.field(validator=_count)
    per_source: bool = attrs.field(default=True, kw_only=True)
    max_concurrent: int | None = attrs.field(
        default=None, kw_only=True, validator=_v.optional(_count)
    )

    def header(self) -> str:
        """The IETF ``RateLimit-Policy`` form: ``"10;w=1;burst=20"``."""
        return f"{self.burst};w={self.burst / self.rate:g}"


@attrs.define(eq=False)
class TokenBucket:
    """Starts full with ``burst`` tokens and refills at ``rate`` tokens a second."""

    rate: float
    burst: int
    tokens: float = attrs.field(init=False)
    updated: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.updated = trio.current_time()

    def take(self) -> float:
        """Take a token; return 0.0 on success, else the seconds until one is there."""
        now = trio.current_time()
        tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if tokens >= 1.0 - _EPSILON:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate

    def remaining(self) -> int:
        now = trio.current_time()
        return int(
            min(float(self.burst), self.tokens + (now - self.updated) * self.rate) + _EPSILON
        )


@attrs.define(eq=False)
class TokenBuckets(Generic[K]):
    """A token bucket per key (a source, a client, a route...), made full on first use.

    Past ``max_keys`` buckets they are all forgotten and start again full: a bound on
    memory whatever the keys a client makes up, at the cost of one refill."""

    max_keys: int = 50_000
    _buckets: dict[K, TokenBucket] = attrs.field(factory=dict, init=False)

    def bucket(self, key: K, limit: RateLimit) -> TokenBucket:
        """The bucket of ``key``, made from ``limit`` if it has none."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > self.max_keys:
                self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(limit.rate, limit.burst)
        return bucket
