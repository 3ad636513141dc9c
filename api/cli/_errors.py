"""The ``cws`` command line's errors: one base with an exit code and a message.

Errors, one base (each is a ``click.ClickException``, so click prints it and exits with
its code)::

    CLIError                 1  an operation failed
    ├── APIProblem           1  the daemon answered with a problem document
    ├── UsageProblem         2  the command was used wrongly (click's own usage errors are 2 too)
    ├── DaemonUnreachable    3  no daemon answers at the URL
    └── NotAuthorized        4  the daemon answered 401 or 403
"""

from __future__ import annotations

from typing import IO, Any

import asyncclick as click

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_AUTHORIZED = 4


class CLIError(click.ClickException):
    """Raised when a command fails; printed as ``error: <message>`` on stderr."""

    exit_code = EXIT_ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        prefix = click.style("error:", fg="red", bold=True)
        # click.echo drops the colour when stderr is not a terminal.
        click.echo(f"{prefix} {self.format_message()}", file=file, err=file is None)


class APIProblem(CLIError):
    """Raised when the daemon answers with an error (an RFC 9457 problem document).

    Attributes:
        status: the HTTP status.
        title: the problem's title.
        detail: the problem's detail.
    """

    hint = ""
    """A line on what to do about it, printed under the message."""

    def __init__(
        self, status: int, title: str, detail: str, extra: dict[str, Any] | None = None
    ) -> None:
        message = _titled(title, detail)
        super().__init__(f"{message}\n  {self.hint}" if self.hint else message)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra or {}
        """The problem's other members (``ungranted`` of a refused install...)."""


def _titled(title: str, detail: str) -> str:
    """``Title: detail``, unless the detail's first clause says the title already
    ("Refused" before "plugin 'x' refused: ..."): a message never repeats its prefix."""
    if not detail:
        return title
    if title.lower() in detail.partition(":")[0].lower():
        return detail
    return f"{title}: {detail}"


class UsageProblem(CLIError):
    """Raised when a command is used in a way it refuses (exit code 2, like click's)."""

    exit_code = EXIT_USAGE


class DaemonUnreachable(CLIError):
    """Raised when nothing answers at the daemon's URL (refused, timed out, bad URL)."""

    exit_code = EXIT_UNREACHABLE

    def __init__(self, url: str, reason: str, *, lead: str = "") -> None:
        super().__init__(
            f"{lead}cannot reach the cws daemon at {url} ({reason}); start it with"
            " `cws daemon`, or point CWS_URL (or --url) at a running one"
        )
        self.url = url
        self.reason = reason


class NotAuthorized(APIProblem):
    """Raised when the daemon answers 401 (no or bad token) or 403 (a missing scope)."""

    exit_code = EXIT_NOT_AUTHORIZED
    hint = (
        "create a token with `cws token create --scope <scope>` (such as plugins:manage,"
        " events:publish or admin) and pass it via CWS_TOKEN, --token or $CWS_HOME/token"
    )
