"""Where the daemon lives by default: its home folder and its port. Kept apart from
:mod:`api._config` so that the CLI's remote commands need not import the configuration's
parser and checks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_PORT = 8947


def default_home(env: Mapping[str, str] | None = None) -> Path:
    """``$CWS_HOME``, else ``~/.cws``."""
    env = os.environ if env is None else env
    return Path(env.get("CWS_HOME") or "~/.cws").expanduser()
