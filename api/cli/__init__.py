"""cli: the ``cws`` command line (asyncclick, on the trio backend).

Layering inside the room (arrows point down; the commands are imported lazily by
``_main._COMMANDS``, so ``cws --version`` pays for none of them)::

    _main                      the root group and main(); names the commands below
      ├── _remote, _faults, _instances, _demo    talk to a daemon over HTTP (_client)
      ├── _config, _tokens, _daemon              local: api._config, api._auth, api._serve
      └── _plugins                               plugins' commands, looked up at the daemon
    _common                    options, output helpers
    _client                    the daemon's HTTP client (httpx stays inside it)
    _errors                    CLIError and its tree (exit codes)
"""

from ._errors import APIProblem as APIProblem
from ._errors import CLIError as CLIError
from ._errors import DaemonUnreachable as DaemonUnreachable
from ._errors import NotAuthorized as NotAuthorized
from ._errors import UsageProblem as UsageProblem
from ._main import cli as cli
from ._main import main as main

__all__ = [
    "APIProblem",
    "CLIError",
    "DaemonUnreachable",
    "NotAuthorized",
    "UsageProblem",
    "cli",
    "main",
]
