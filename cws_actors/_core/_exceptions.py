"""The exceptions of :mod:`cws_actors`.

One base, a small tree::

    ActorError
    ├── ActorNotFound        no actor at that path
    ├── ActorStopped         the actor was stopped and will not run again
    │   └── ActorQuarantined it exhausted its restart budget; cleared by hand
    ├── ActorRestarting      the actor is restarting and does not stash asks
    ├── NotReady             its readiness probe fails
    ├── RateLimited          its token bucket for this source is empty (retry_after)
    ├── MailboxFull          its mailbox is at capacity
    ├── AskTimeout           no reply before the ask's deadline
    ├── DeadlineExceeded     the envelope's deadline passed before it was handled
    └── HandlerFailed        the handler raised; the exception is chained and kept

Every refusal carries ``reason``, the dead-letter reason code that goes with it.
"""

from __future__ import annotations

from typing import Any


class ActorError(Exception):
    """Base class of the errors raised by :mod:`cws_actors`."""

    reason: str = "error"


class ActorNotFound(ActorError, LookupError):
    """Raised when no actor lives at the target path."""

    reason = "no_such_actor"

    def __init__(self, path: str) -> None:
        super().__init__(f"no actor at {path!r}")
        self.path = path


class ActorStopped(ActorError):
    """Raised when the actor was stopped (or exited for good) and will not run again."""

    reason = "stopped"

    def __init__(self, path: str) -> None:
        super().__init__(f"actor {path!r} is stopped")
        self.path = path


class ActorQuarantined(ActorStopped):
    """Raised when the actor exhausted its restart budget and is quarantined: it runs
    again only after ``clear_quarantine`` (``POST /api/v1/actors/PATH/clear-quarantine``)."""

    def __init__(self, path: str) -> None:
        ActorError.__init__(
            self,
            f"actor {path!r} is quarantined after exhausting its restart budget;"
            " clear_quarantine() starts it again",
        )
        self.path = path


class ActorRestarting(ActorError):
    """Raised when the actor is restarting and its stash is absent or full."""

    reason = "restarting"

    def __init__(self, path: str) -> None:
        super().__init__(f"actor {path!r} is restarting; retry shortly")
        self.path = path


class NotReady(ActorError):
    """Raised when the actor's readiness probe fails: it is out of routing."""

    reason = "not_ready"

    def __init__(self, path: str, retry_after: float) -> None:
        super().__init__(f"actor {path!r} is not ready; retry after {retry_after:g}s")
        self.path = path
        self.retry_after = retry_after


class RateLimited(ActorError):
    """Raised when the actor's rate limit for this source is spent.

    Attributes:
        retry_after: seconds until the next message would be admitted.
        policy: the RateLimit that refused it.
    """

    reason = "rate_limited"

    def __init__(self, path: str, retry_after: float, policy: Any, detail: str = "") -> None:
        super().__init__(f"actor {path!r} is rate limited{detail}; retry after {retry_after:.3g}s")
        self.path = path
        self.retry_after = retry_after
        self.policy = policy


class MailboxFull(ActorError):
    """Raised when the actor's mailbox is at capacity (overflow REJECT, or BLOCK past the
    deadline), or to an asker whose message a DROP_OLDEST mailbox evicted."""

    reason = "mailbox_full"

    def __init__(self, path: str, capacity: int) -> None:
        super().__init__(f"mailbox of actor {path!r} is full ({capacity} messages)")
        self.path = path
        self.capacity = capacity


class AskTimeout(ActorError, TimeoutError):
    """Raised by ``ask`` when no reply came before its timeout or deadline."""

    reason = "expired"

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(f"no reply from actor {path!r} within {timeout:g}s")
        self.path = path
        self.timeout = timeout


class DeadlineExceeded(ActorError):
    """Raised when an envelope's deadline passed before its handler ran."""

    reason = "expired"

    def __init__(self, path: str) -> None:
        super().__init__(f"the deadline of a message to {path!r} passed before it was handled")
        self.path = path


class HandlerFailed(ActorError):
    """Raised to an asker when the handler raised; ``exception`` is what it raised (also
    chained as ``__cause__``). The actor crashed and its supervisor applies its policy."""

    reason = "handler_failed"

    def __init__(self, path: str, exception: BaseException) -> None:
        super().__init__(
            f"actor {path!r} failed handling the message: {type(exception).__name__}: {exception}"
        )
        self.path = path
        self.exception = exception
