"""The exceptions of :mod:`cws_actors`: one tree per layer (httpx's style).

The actor core::

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

The plugin host and what it runs::

    PluginError
    ├── PluginNotFound       no plugin of that name (also a LookupError)
    ├── PluginRefused        it cannot load or install here; ``reason`` says why
    ├── PluginCrashed        a subprocess plugin's process died or broke the protocol
    ├── PluginCallFailed     a subprocess plugin's handler raised
    ├── ManifestError        a ``plugin.toml`` that cannot be used (also a ValueError)
    └── ArchiveError         a ``.cwsplugin`` archive that cannot be used (also a ValueError)

Fault injection has its own tree, in :mod:`cws_actors.faults` (``FaultError``). The
second bases (LookupError, ValueError) keep what ``except`` clauses of those caught
before the trees were drawn; PluginCrashed and PluginCallFailed, raised inside a plugin's
actor, reach an asker chained in HandlerFailed, as before.
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


class PluginError(Exception):
    """Base of the plugin host's errors; the message says what to do."""


class PluginNotFound(PluginError, LookupError):
    """Raised when no plugin of that name was discovered (or is loaded, for a call)."""


class PluginRefused(PluginError):
    """Raised when the plugin cannot load (or install) here: incompatible API version,
    bad manifest, broken code, disabled, unsigned under ``require_signed``...;
    ``reason`` says which."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"plugin {name!r} refused: {reason}")
        self.name = name
        self.reason = reason


class SandboxNotGranted(PluginRefused):
    """A plugin refused (at install, update or load) because its sandbox asks for what
    the operator has not granted: ``ungranted`` lists those requests, in the order its
    sandbox asks for them, and ``requests`` everything it asks for."""

    def __init__(
        self, name: str, reason: str, ungranted: tuple[str, ...], requests: tuple[str, ...]
    ) -> None:
        super().__init__(name, reason)
        self.ungranted = ungranted
        self.requests = requests


class PluginCrashed(PluginError):
    """Raised in a subprocess plugin's actor when its process died or broke the
    protocol; the message classifies how (exit code, signal, memory or CPU limit)."""


class PluginCallFailed(PluginError):
    """Raised in a subprocess plugin's actor when its handler raised; ``error_type`` is
    its exception's type."""

    def __init__(self, plugin: str, error_type: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r} raised {error_type}: {message}")
        self.error_type = error_type


class ManifestError(PluginError, ValueError):
    """Raised for a ``plugin.toml`` that cannot be used; the message names the file and
    field."""


class ArchiveError(PluginError, ValueError):
    """Base class of the errors about a ``.cwsplugin`` archive (a bad zip, an unsafe
    entry); raised by ``check_archive`` and ``make_archive``."""
