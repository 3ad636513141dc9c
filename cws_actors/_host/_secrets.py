"""The operator's secrets (``cws secret set NAME``), for the plugins granted them.

They live in ``$CWS_HOME/secrets.json``: a JSON object of name -> value, mode 0600 in
the home folder (0700), written whole to a 0600 temporary file that is then renamed over
it, so that a reader sees the old file or the new one, never a mixture, and the file is
never readable by anyone but the daemon's user, not even for a moment. At rest they are
plain text, as a cloud CLI keeps its credentials: the file's mode, and the sandbox that
keeps every subprocess plugin out of ``$CWS_HOME``, are what protect them. A secret is
never put in a plugin's environment; a plugin reads one through ``ctx.secret(name)``,
which the daemon answers only if the plugin's sandbox asks for that secret and the
operator granted it (:meth:`~cws_actors.PluginHost.read_secret`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import attrs
import trio

from .._plugins._sandbox import check_secret_name

SECRETS_FILE = "secrets.json"
MAX_SECRET_BYTES = 64 * 1024
"""The longest value a secret may have (a key, a password, a service account's JSON)."""


class SecretNotSet(LookupError):
    """No secret of that name is stored."""


@attrs.define(eq=False)
class SecretStore:
    """The secrets file at ``path``; every method runs its file work in a thread, one
    at a time (``cws secret`` through the daemon and the plugins' reads)."""

    path: Path
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    async def names(self) -> list[str]:
        async with self._lock:
            return sorted(await trio.to_thread.run_sync(self._read))

    async def get(self, name: str) -> str:
        """Raises:
        SecretNotSet: saying how to set it."""
        async with self._lock:
            value = (await trio.to_thread.run_sync(self._read)).get(name)
        if value is None:
            raise SecretNotSet(
                f"the secret {name!r} is not set; the operator sets it with `cws secret set {name}`"
            )
        return value

    async def set(self, name: str, value: str) -> bool:
        """Store ``value`` under ``name``; True if it replaced one.

        Raises:
            ValueError: a bad name, or a value that is empty or over 64 KiB.
        """
        check_secret_name(name)
        if not isinstance(value, str) or not value:
            raise ValueError("a secret's value must be a non-empty string")
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise ValueError(f"a secret's value may be at most {MAX_SECRET_BYTES} bytes")
        async with self._lock:
            return bool(await trio.to_thread.run_sync(self._change, name, value))

    async def remove(self, name: str) -> bool:
        """Forget ``name``; False if it was not set."""
        async with self._lock:
            return bool(await trio.to_thread.run_sync(self._change, name, None))

    def _read(self) -> dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{self.path} is not a JSON object of secrets")
        return {str(key): str(value) for key, value in data.items()}

    def _change(self, name: str, value: str | None) -> bool:
        secrets = self._read()
        existed = name in secrets
        if value is None:
            if not existed:
                return False
            del secrets[name]
        else:
            secrets[name] = value
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkstemp creates the file 0600: the values are never readable by others.
        fd, temporary = tempfile.mkstemp(prefix=".secrets-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(secrets, out, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        os.chmod(self.path, 0o600)  # an older file made by hand keeps no wider mode
        return existed
