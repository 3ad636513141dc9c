"""``cws plugin keygen`` and ``cws plugin sign FILE``: minisign-compatible keys and
signatures, so that a plugin's publisher needs no other tool (``minisign -V`` verifies
what these write, and ``minisign -S`` signs with the keys ``keygen`` makes).

The defaults are minisign's: the secret key in ``~/.minisign/minisign.key``, the public
key in ``./minisign.pub``, the signature beside the file as ``FILE.minisig``, prehashed
(BLAKE2b-512) signatures, secret keys encrypted with scrypt (minisign's parameters:
about a second and 1 GiB of memory to try one password).

The password comes from ``CWS_SIGNING_PASSWORD`` when it is set (a CI secret), else it
is asked on the terminal (twice for a new key), else it is the first line of standard
input (as minisign reads it). ``keygen --unencrypted`` writes a key with no password
(``minisign -W``): keep such a key where only you can read it.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import asyncclick as click
import trio

from ._common import on_terminal
from ._errors import CLIError, UsageProblem

PASSWORD_ENV = "CWS_SIGNING_PASSWORD"
DEFAULT_SECRET_KEY = Path("~/.minisign/minisign.key")
DEFAULT_PUBLIC_KEY = Path("minisign.pub")
_DURATION = re.compile(r"(\d+)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


async def _password(*, new: bool) -> str:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        password = from_env
    elif on_terminal(sys.stdin):
        password = await click.prompt(
            "Password for the new secret key" if new else "Password of the secret key",
            hide_input=True, confirmation_prompt=new, err=True,
        )  # fmt: skip
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageProblem(
            f"no password (set {PASSWORD_ENV}, type one, or pipe it on standard input);"
            " for a key without one, pass --unencrypted"
            if new
            else f"no password (set {PASSWORD_ENV}, type one, or pipe it on standard input)"
        )
    return str(password)


def _write_new(path: Path, text: str, *, mode: int, force: bool) -> None:
    """Write ``text`` to ``path`` with ``mode``, refusing to overwrite unless ``force``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CLIError(f"{path} exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc}") from None
    with os.fdopen(fd, "w", encoding="ascii") as file:
        os.fchmod(file.fileno(), mode)
        file.write(text)


def parse_duration(text: str) -> int:
    """``90d``, ``12h``, ``30m``, ``3600s`` or ``3600`` -> seconds."""
    found = _DURATION.fullmatch(text.strip())
    if found is None or int(found[1]) == 0:
        raise click.BadParameter(
            f"expected a duration such as 90d, 12h, 30m or 3600s, got {text!r}"
        )
    return int(found[1]) * _UNITS[found[2]]


@click.command("keygen")
@click.option("--secret-key", "secret_path", type=click.Path(dir_okay=False, path_type=Path),
              default=str(DEFAULT_SECRET_KEY), show_default=True,
              help="Where to write the secret key (mode 0600).")  # fmt: skip
@click.option("--public-key", "public_path", type=click.Path(dir_okay=False, path_type=Path),
              default=str(DEFAULT_PUBLIC_KEY), show_default=True,
              help="Where to write the public key (hand it out).")  # fmt: skip
@click.option("--unencrypted", is_flag=True,
              help="Do not encrypt the secret key with a password (minisign -W).")  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
async def keygen(secret_path: Path, public_path: Path, unencrypted: bool, force: bool) -> None:
    """Make a signing key pair in minisign's format (minisign -G).

    The secret key is encrypted with a password (from $CWS_SIGNING_PASSWORD, the
    terminal, or the first line of standard input) unless --unencrypted.
    """
    secret_path, public_path = await trio.to_thread.run_sync(
        _free_paths, secret_path, public_path, force
    )
    password = None if unencrypted else await _password(new=True)
    key_id = await trio.to_thread.run_sync(_keygen, secret_path, public_path, password, force)
    click.echo(key_id)


def _free_paths(secret_path: Path, public_path: Path, force: bool) -> tuple[Path, Path]:
    """The two paths, expanded; neither may exist unless ``force``."""
    paths = (secret_path.expanduser(), public_path.expanduser())
    for path in paths:
        if path.exists() and not force:
            raise CLIError(f"{path} exists; pass --force to overwrite it")
    return paths


def _keygen(secret_path: Path, public_path: Path, password: str | None, force: bool) -> str:
    from cws_actors import generate_keypair

    key = generate_keypair()
    _write_new(secret_path, key.to_minisign(password), mode=0o600, force=force)
    public = key.public_key()
    _write_new(public_path, public.to_minisign(), mode=0o644, force=force)
    blob = public.to_minisign().splitlines()[1]
    click.echo(f"secret key: {secret_path} (keep it secret)", err=True)
    click.echo(f"public key: {public_path} (key id {public.key_id_hex})", err=True)
    click.echo(
        f"to trust it, copy {public_path.name} into $CWS_HOME/trusted_keys/;"
        f" minisign verifies with: minisign -Vm <file> -P {blob}",
        err=True,
    )
    return public.key_id_hex


@click.command("sign")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--secret-key", "secret_path", type=click.Path(dir_okay=False, path_type=Path),
              default=str(DEFAULT_SECRET_KEY), show_default=True,
              help="The secret key (from `cws plugin keygen` or `minisign -G`).")  # fmt: skip
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the signature [default: FILE.minisig].")  # fmt: skip
@click.option("--expires", "expires_in", metavar="DURATION", default=None,
              help="Make the signature expire after DURATION (90d, 12h, 30m, 3600s):"
                   " the daemon refuses it then.")  # fmt: skip
@click.option(
    "--trusted-comment",
    default=None,
    help="The signed comment [default: timestamp:<now> file:<name> hashed].",
)
@click.option("--legacy", is_flag=True,
              help="Sign the file itself, not its BLAKE2b-512 hash (minisign -l).")  # fmt: skip
async def sign(
    file: Path,
    secret_path: Path,
    output: Path | None,
    expires_in: str | None,
    trusted_comment: str | None,
    legacy: bool,
) -> None:
    """Sign FILE (a .cwsplugin) in minisign's format, writing FILE.minisig (minisign -S).

    The password of an encrypted key comes from $CWS_SIGNING_PASSWORD, the terminal, or
    the first line of standard input.
    """
    now = int(time.time())
    expires = now + parse_duration(expires_in) if expires_in is not None else None
    if trusted_comment is None:
        name = re.sub(r"\s", "_", file.name)  # fields are split on whitespace
        trusted_comment = f"timestamp:{now}\tfile:{name}" + ("" if legacy else "\thashed")
    elif "\n" in trusted_comment or "\r" in trusted_comment:
        raise click.BadParameter("must be one line", param_hint="--trusted-comment")
    if expires is not None:
        trusted_comment += f"\texpires:{expires}"
    secret_path, encrypted = await trio.to_thread.run_sync(_secret_key, secret_path)
    password = await _password(new=False) if encrypted else None
    target = output if output is not None else file.with_name(f"{file.name}.minisig")
    key_id = await trio.to_thread.run_sync(
        _sign_file, file, secret_path, password, trusted_comment, legacy, target
    )
    until = f", expires at {expires}" if expires is not None else ""
    click.echo(f"signed {file} with key {key_id}{until}: {target}", err=True)


def _secret_key(path: Path) -> tuple[Path, bool]:
    """The secret key's path, expanded, and whether it is encrypted."""
    from cws_actors import secret_key_encrypted

    path = path.expanduser()
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        hint = "" if path.exists() else " (make one with `cws plugin keygen`)"
        raise CLIError(f"cannot read the secret key {path}: {exc}{hint}") from None
    return path, secret_key_encrypted(text)


def _sign_file(
    file: Path,
    secret_path: Path,
    password: str | None,
    trusted_comment: str,
    legacy: bool,
    target: Path,
) -> str:
    from cws_actors import SignatureError, SigningKey

    try:
        key = SigningKey.load(secret_path, password=password)
        data = file.read_bytes()
        signature = key.sign(data, trusted_comment=trusted_comment, prehashed=not legacy)
    except SignatureError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot read {file}: {exc}") from None
    _write_new(target, signature, mode=0o644, force=True)
    return key.key_id_hex
