"""api: the daemon's faces: the HTTP app, its client and the ``cws`` command line.

It composes the lower layers (``cws_actors``, ``providers``, ``supervision``) and is
imported by nothing in the project. Its rooms, arrows pointing down (nothing imports
upwards, and ``cli`` reaches the daemon's stack only in the command that runs it)::

    cli/            the ``cws`` command line; _main imports its commands lazily
      │  (cws daemon)
      ▼
    _serve          serve_daemon: home lock, socket, hypercorn, signals, systemd
      ▼
    _http/          create_app and one blueprint per resource (see its docstring)
      ▼
    _daemon         Daemon and open_daemon: the runtime and the plugin host composed
      ▼
    _config         DaemonConfig, load_config (one declaration per setting)
    _auth, _metrics, _logging, _home, _home_lock, _toml_lines       leaves

The public names are imported on first use (module ``__getattr__``), so that
``import api`` for ``cws --version`` pays for none of the daemon's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import DaemonConfig as DaemonConfig
    from ._config import load_config as load_config
    from ._daemon import Daemon as Daemon
    from ._daemon import open_daemon as open_daemon
    from ._http import create_app as create_app
    from ._serve import serve_daemon as serve_daemon

__all__ = ["Daemon", "DaemonConfig", "create_app", "load_config", "open_daemon", "serve_daemon"]

_LAZY = {
    "Daemon": "api._daemon",
    "DaemonConfig": "api._config",
    "create_app": "api._http",
    "load_config": "api._config",
    "open_daemon": "api._daemon",
    "serve_daemon": "api._serve",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later lookups do not come here
        return value
    raise AttributeError(f"module 'api' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
