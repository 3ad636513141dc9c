"""Ed25519 detached signatures for plugin archives, in the minisign format.

Anyone can sign a ``.cwsplugin`` with the ``minisign`` tool they already know
(``minisign -S -m plugin.cwsplugin``) and we verify it here; we can also sign with our
own key files (:class:`SigningKey`), which produce the same ``.minisig`` text.

The formats (https://jedisct1.github.io/minisign/)::

    public key (.pub)            untrusted comment: <text>
                                 base64( b"Ed" + key_id[8] + public_key[32] )

    signature (.minisig)         untrusted comment: <text>
                                 base64( algorithm[2] + key_id[8] + signature[64] )
                                 trusted comment: <text>
                                 base64( global_signature[64] )

``algorithm`` is ``b"ED"`` when ``signature`` covers BLAKE2b-512 of the file (minisign's
default) or ``b"Ed"`` (legacy) when it covers the raw file. ``global_signature`` covers
``signature + trusted_comment``, so the trusted comment cannot be altered either. Key ids
are shown as minisign shows them: the 8 bytes read as a little-endian integer, in 16
upper-case hex digits (``94263A8B02C93B24``).

Trusted comments are read as minisign writes them: ``name:value`` fields separated by
tabs (minisign's default, ``timestamp:<t>\\tfile:<name>\\thashed``) or spaces (what
people type after ``minisign -t``); a word without a colon and an unknown name are
ignored. ``expires:<unix seconds>`` is enforced by :func:`verify`; one that is not unix
seconds, or given twice, is refused (see :func:`make_trusted_comment`).

Secret keys, in minisign's own format (:meth:`SigningKey.to_minisign`, read by
:meth:`SigningKey.from_minisign` and :meth:`SigningKey.load`), so that ``minisign -S``
and ``cws plugin sign`` use the same key files::

    untrusted comment: minisign encrypted secret key
    base64( b"Ed" + kdf[2] + b"B2" + salt[32] + opslimit[8 LE] + memlimit[8 LE]
            + ( key_id[8] + ed25519_secret_key[64] + checksum[32] ) XOR stream[104] )

``kdf`` is ``b"Sc"`` when the key is encrypted: ``stream`` is scrypt (libsodium's
scryptsalsa208sha256, its N, r and p derived from opslimit and memlimit as libsodium
does) of the password with ``salt``; minisign's parameters, which we write too, are
opslimit 33554432 and memlimit 1 GiB (N = 2^20, r = 8, p = 1: about a second and 1 GiB
of memory, on purpose). ``kdf`` is two zero bytes when the key is not encrypted
(``minisign -W``): nothing is XORed. ``checksum`` is BLAKE2b-256 of ``b"Ed" + key_id +
ed25519_secret_key`` (minisign 0.11 leaves it zero in unencrypted keys): a wrong
password shows as a checksum that does not match.

The earlier cws-actors secret key file (:meth:`SigningKey.save`, mode 0600) is still
read::

    untrusted comment: cws-actors secret key <KEY ID>
    base64( b"Ed" + key_id[8] + ed25519_seed[32] )

Errors, one base::

    SignatureError (ValueError)   malformed key, signature or trust-store file
    ├── BadSignature              the signature does not match the data or the comment
    ├── UntrustedKey              signed by a key that no trusted key file holds
    ├── RevokedKey                signed by a key listed in the revocation file
    └── ExpiredSignature          the trusted comment's ``expires:`` is in the past
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

# cryptography is imported where a key is used: the daemon starts without it.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TRUSTED_KEYS_DIR = "trusted_keys"
"""Folder under ``$CWS_HOME`` holding one minisign ``*.pub`` file per trusted signer."""
REVOKED_KEYS_FILE = "revoked_keys"
"""File under ``$CWS_HOME`` listing revoked key ids, one per line."""

_ALG_ED25519 = b"Ed"
_ALG_PREHASHED = b"ED"
_KEY_ID_LEN = 8
_PUBLIC_KEY_LEN = 32
_SEED_LEN = 32
_SIG_LEN = 64
_UNTRUSTED_PREFIX = "untrusted comment: "
_TRUSTED_PREFIX = "trusted comment: "
_SECRET_COMMENT = "cws-actors secret key"
_KEY_ID_HEX = re.compile(r"[0-9A-Fa-f]{16}")
_MINISIGN_SECRET_COMMENT = "minisign encrypted secret key"
_KDF_SCRYPT = b"Sc"
_KDF_NONE = b"\x00\x00"
_CHK_BLAKE2B = b"B2"
_SALT_LEN = 32
_SECRET_KEY_LEN = 64  # libsodium's: the seed, then the public key
_CHECKSUM_LEN = 32
_KEYNUM_SK_LEN = _KEY_ID_LEN + _SECRET_KEY_LEN + _CHECKSUM_LEN
_MINISIGN_SECRET_LEN = 2 + 2 + 2 + _SALT_LEN + 8 + 8 + _KEYNUM_SK_LEN
KDF_OPSLIMIT = 33_554_432
"""minisign's scrypt opslimit (libsodium's ``OPSLIMIT_SENSITIVE``)."""
KDF_MEMLIMIT = 1_073_741_824
"""minisign's scrypt memlimit, 1 GiB (libsodium's ``MEMLIMIT_SENSITIVE``)."""
_SCRYPT_MAX_MEMORY = 2**31 - 1  # what hashlib.scrypt accepts
_UNIX_SECONDS = re.compile(r"\d{1,12}(\.\d+)?")


class SignatureError(ValueError):
    """Raised when a key, signature or trust-store file is malformed or unreadable."""


class BadSignature(SignatureError):
    """Raised when the signature does not match the data (tampered) or the trusted comment."""


class UntrustedKey(SignatureError):
    """Raised when the signing key's id is not among the trusted public keys."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"signed by key {key_id}, which is not a trusted key")
        self.key_id = key_id


class RevokedKey(SignatureError):
    """Raised when the signing key's id is listed as revoked."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"signed by key {key_id}, which has been revoked")
        self.key_id = key_id


class ExpiredSignature(SignatureError):
    """Raised when the trusted comment's ``expires:`` time is not in the future."""

    def __init__(self, key_id: str, expires: float, now: float) -> None:
        super().__init__(
            f"signature by key {key_id} expired at {expires:.0f} (it is now {now:.0f})"
        )
        self.key_id = key_id
        self.expires = expires


def key_id_hex(key_id: bytes) -> str:
    """The id as minisign prints it: 8 little-endian bytes as 16 upper-case hex digits."""
    return f"{int.from_bytes(key_id, 'little'):016X}"


def _normalize_key_id(key_id: bytes | str) -> str:
    if isinstance(key_id, bytes):
        if len(key_id) != _KEY_ID_LEN:
            raise ValueError(f"a key id is {_KEY_ID_LEN} bytes, got {len(key_id)}")
        return key_id_hex(key_id)
    if isinstance(key_id, str) and _KEY_ID_HEX.fullmatch(key_id.strip()):
        return key_id.strip().upper()
    raise ValueError(f"a key id is 8 bytes or 16 hex digits, got {key_id!r}")


def _check_len(name: str, value: bytes, expected: int) -> None:
    if len(value) != expected:
        raise ValueError(f"{name} must be {expected} bytes, got {len(value)}")


def _decode_b64(line: str, *, what: str, length: int) -> bytes:
    try:
        raw = base64.b64decode(line.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{what}: expected base64, got {line[:40]!r}") from None
    if len(raw) != length:
        raise SignatureError(f"{what}: expected {length} bytes once decoded, got {len(raw)}")
    return raw


def _lines(text: str, *, what: str, count: int) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != count:
        raise SignatureError(f"{what}: expected {count} lines, got {len(lines)}")
    return lines


def _untrusted(line: str, *, what: str) -> None:
    if not line.startswith(_UNTRUSTED_PREFIX.rstrip()):
        raise SignatureError(f"{what}: line 1 must start with {_UNTRUSTED_PREFIX!r}")


@attrs.frozen
class PublicKey:
    """A minisign Ed25519 public key: what a ``.pub`` file holds."""

    key_id: bytes = attrs.field()
    """The 8 raw id bytes (see :attr:`key_id_hex` for how minisign prints them)."""
    key: bytes = attrs.field(repr=False)
    """The 32-byte Ed25519 public key."""

    @key_id.validator
    def _check_key_id(self, _: object, value: bytes) -> None:
        _check_len("key_id", value, _KEY_ID_LEN)

    @key.validator
    def _check_key(self, _: object, value: bytes) -> None:
        _check_len("key", value, _PUBLIC_KEY_LEN)

    @property
    def key_id_hex(self) -> str:
        """The id as minisign prints it, e.g. ``94263A8B02C93B24``."""
        return key_id_hex(self.key_id)

    def to_minisign(self) -> str:
        """The text of a minisign ``.pub`` file for this key."""
        blob = base64.b64encode(_ALG_ED25519 + self.key_id + self.key).decode("ascii")
        return f"{_UNTRUSTED_PREFIX}minisign public key {self.key_id_hex}\n{blob}\n"

    @classmethod
    def from_minisign(cls, text: str) -> PublicKey:
        """Parse a minisign ``.pub`` file, or the bare base64 line that ``minisign -P`` takes.

        Raises:
            SignatureError: not two lines (or one bare base64 line), not base64, wrong
                length, or not an Ed25519 key.
        """
        what = "public key"
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) == 2:
            _untrusted(lines[0], what=what)
            blob = lines[1]
        elif len(lines) == 1 and not lines[0].startswith("untrusted comment"):
            blob = lines[0]
        else:
            raise SignatureError(
                f"{what}: expected an 'untrusted comment:' line and a base64 line, "
                f"got {len(lines)} lines"
            )
        raw = _decode_b64(blob, what=what, length=2 + _KEY_ID_LEN + _PUBLIC_KEY_LEN)
        if raw[:2] != _ALG_ED25519:
            raise SignatureError(f"{what}: expected algorithm 'Ed', got {raw[:2]!r}")
        return cls(key_id=raw[2:10], key=raw[10:])


@attrs.frozen
class SigningKey:
    """An Ed25519 private key with its minisign key id; make one with :func:`generate_keypair`."""

    key_id: bytes = attrs.field()
    seed: bytes = attrs.field(repr=False)
    """The 32-byte Ed25519 private key (its seed); never shown in the repr."""

    @key_id.validator
    def _check_key_id(self, _: object, value: bytes) -> None:
        _check_len("key_id", value, _KEY_ID_LEN)

    @seed.validator
    def _check_seed(self, _: object, value: bytes) -> None:
        _check_len("seed", value, _SEED_LEN)

    @property
    def key_id_hex(self) -> str:
        """The id as minisign prints it."""
        return key_id_hex(self.key_id)

    def public_key(self) -> PublicKey:
        """The public half, to hand out as a ``.pub`` file."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        public = self._private().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return PublicKey(key_id=self.key_id, key=public)

    def _private(self) -> Ed25519PrivateKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.seed)

    def _sign(self, message: bytes) -> bytes:
        return self._private().sign(message)

    def save(self, path: Path) -> None:
        """Write the key to a new file readable by its owner only (mode 0600).

        Raises:
            FileExistsError: ``path`` exists; keys are never overwritten.
        """
        blob = base64.b64encode(_ALG_ED25519 + self.key_id + self.seed).decode("ascii")
        text = f"{_UNTRUSTED_PREFIX}{_SECRET_COMMENT} {self.key_id_hex}\n{blob}\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            os.fchmod(file.fileno(), 0o600)  # the umask cannot widen it, but be explicit
            file.write(text)

    @classmethod
    def load(cls, path: Path, *, password: str | None = None) -> SigningKey:
        """Read a minisign secret key file (``minisign -G``, ``cws plugin keygen``) or one
        written by :meth:`save`.

        Args:
            password: the key's password, if it is encrypted.

        Raises:
            SignatureError: unreadable, readable by group or others, malformed, encrypted
                and no password given, or the password is wrong.
        """
        what = f"secret key {path}"
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise SignatureError(f"{what}: cannot read it: {exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SignatureError(
                f"{what}: mode {stat.S_IMODE(mode):04o} lets others read it; chmod 600 it"
            )
        lines = _lines(text, what=what, count=2)
        _untrusted(lines[0], what=what)
        if _SECRET_COMMENT not in lines[0]:
            return cls.from_minisign(text, password=password, what=what)
        raw = _decode_b64(lines[1], what=what, length=2 + _KEY_ID_LEN + _SEED_LEN)
        if raw[:2] != _ALG_ED25519:
            raise SignatureError(f"{what}: expected algorithm 'Ed', got {raw[:2]!r}")
        return cls(key_id=raw[2:10], seed=raw[10:])

    def sign(self, data: bytes, *, trusted_comment: str, prehashed: bool = True) -> str:
        """Sign ``data``; return the ``.minisig`` text (see :func:`sign`)."""
        return sign(data, self, trusted_comment=trusted_comment, prehashed=prehashed)

    def to_minisign(
        self,
        password: str | None,
        *,
        opslimit: int = KDF_OPSLIMIT,
        memlimit: int = KDF_MEMLIMIT,
    ) -> str:
        """The text of a minisign secret key file for this key, encrypted with
        ``password`` (scrypt with minisign's parameters unless told otherwise), or not
        encrypted when ``password`` is None (as ``minisign -W`` writes it)."""
        secret = self.seed + self.public_key().key
        checksum = hashlib.blake2b(
            _ALG_ED25519 + self.key_id + secret, digest_size=_CHECKSUM_LEN
        ).digest()
        keynum_sk = self.key_id + secret + checksum
        if password is None:
            kdf, salt, opslimit, memlimit = _KDF_NONE, bytes(_SALT_LEN), 0, 0
        else:
            if not password:
                raise ValueError("an empty password encrypts nothing; pass None for no password")
            kdf, salt = _KDF_SCRYPT, secrets.token_bytes(_SALT_LEN)
            stream = _scrypt(password, salt, opslimit, memlimit, what="secret key")
            keynum_sk = bytes(a ^ b for a, b in zip(keynum_sk, stream, strict=True))
        raw = (
            _ALG_ED25519 + kdf + _CHK_BLAKE2B + salt
            + opslimit.to_bytes(8, "little") + memlimit.to_bytes(8, "little") + keynum_sk
        )  # fmt: skip
        blob = base64.b64encode(raw).decode("ascii")
        return f"{_UNTRUSTED_PREFIX}{_MINISIGN_SECRET_COMMENT}\n{blob}\n"

    @classmethod
    def from_minisign(
        cls, text: str, *, password: str | None = None, what: str = "secret key"
    ) -> SigningKey:
        """Parse a minisign secret key file, decrypting it with ``password`` if it is
        encrypted.

        Raises:
            SignatureError: malformed, encrypted and no password given, or the password
                is wrong (the key's checksum does not match).
        """
        lines = _lines(text, what=what, count=2)
        _untrusted(lines[0], what=what)
        raw = _decode_b64(lines[1], what=what, length=_MINISIGN_SECRET_LEN)
        algorithm, kdf, checksum_algorithm = raw[0:2], raw[2:4], raw[4:6]
        if algorithm != _ALG_ED25519:
            raise SignatureError(f"{what}: expected algorithm 'Ed', got {algorithm!r}")
        if checksum_algorithm != _CHK_BLAKE2B:
            raise SignatureError(
                f"{what}: expected checksum algorithm 'B2', got {checksum_algorithm!r}"
            )
        salt = raw[6:38]
        opslimit = int.from_bytes(raw[38:46], "little")
        memlimit = int.from_bytes(raw[46:54], "little")
        keynum_sk = raw[54:]
        if kdf == _KDF_SCRYPT:
            if password is None:
                raise SignatureError(f"{what}: the key is encrypted; its password is needed")
            stream = _scrypt(password, salt, opslimit, memlimit, what=what)
            keynum_sk = bytes(a ^ b for a, b in zip(keynum_sk, stream, strict=True))
        elif kdf != _KDF_NONE:
            raise SignatureError(f"{what}: expected key derivation 'Sc' or none, got {kdf!r}")
        key_id = keynum_sk[:_KEY_ID_LEN]
        secret = keynum_sk[_KEY_ID_LEN : _KEY_ID_LEN + _SECRET_KEY_LEN]
        checksum = keynum_sk[_KEY_ID_LEN + _SECRET_KEY_LEN :]
        expected = hashlib.blake2b(algorithm + key_id + secret, digest_size=_CHECKSUM_LEN).digest()
        unencrypted_without_checksum = kdf == _KDF_NONE and checksum == bytes(_CHECKSUM_LEN)
        if checksum != expected and not unencrypted_without_checksum:
            if kdf == _KDF_SCRYPT:
                raise SignatureError(f"{what}: wrong password (the key's checksum does not match)")
            raise SignatureError(f"{what}: its checksum does not match: the file is damaged")
        key = cls(key_id=key_id, seed=secret[:_SEED_LEN])
        if key.public_key().key != secret[_SEED_LEN:]:
            raise SignatureError(f"{what}: its public half does not match its secret half")
        return key


def secret_key_encrypted(text: str) -> bool:
    """Whether ``text`` is an encrypted minisign secret key (its password is needed to
    load it); False for anything else, which :meth:`SigningKey.load` judges."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 2:
        return False
    try:
        raw = base64.b64decode(lines[1].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == _MINISIGN_SECRET_LEN and raw[2:4] == _KDF_SCRYPT


def _scrypt_parameters(opslimit: int, memlimit: int) -> tuple[int, int, int]:
    """libsodium's ``pickparams``: scrypt's (N, r, p) for crypto_pwhash_scryptsalsa208sha256's
    opslimit and memlimit, as minisign derives them."""
    opslimit = max(opslimit, 32768)
    r = 8
    if opslimit < memlimit // 32:
        p = 1
        max_n = opslimit // (r * 4)
        log2_n = next(n for n in range(1, 64) if (1 << n) > max_n // 2 or n == 63)
    else:
        max_n = memlimit // (r * 128)
        log2_n = next(n for n in range(1, 64) if (1 << n) > max_n // 2 or n == 63)
        max_rp = min((opslimit // 4) // (1 << log2_n), 0x3FFFFFFF)
        p = max_rp // r
    return 1 << log2_n, r, p


def _scrypt(password: str, salt: bytes, opslimit: int, memlimit: int, *, what: str) -> bytes:
    n, r, p = _scrypt_parameters(opslimit, memlimit)
    memory = 128 * r * (n + p + 2) + 1024 * 1024
    if memory > _SCRYPT_MAX_MEMORY or p < 1:
        raise SignatureError(
            f"{what}: its scrypt parameters (opslimit {opslimit}, memlimit {memlimit}:"
            f" N={n}, r={r}, p={p}) are beyond what this reader supports (2 GiB)"
        )
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=memory,
        dklen=_KEYNUM_SK_LEN,
    )  # fmt: skip


def generate_keypair() -> SigningKey:
    """A new random Ed25519 key with a random 8-byte key id, as ``minisign -G`` makes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    return SigningKey(key_id=secrets.token_bytes(_KEY_ID_LEN), seed=seed)


def make_trusted_comment(
    *, file: str, timestamp: float | None = None, expires: float | None = None
) -> str:
    """``timestamp:<t>\\tfile:<name>[\\texpires:<t>]``, as minisign's default plus an expiry.

    Args:
        file: the signed file's name (no tabs or line breaks).
        timestamp: signing time in unix seconds; now if ``None``.
        expires: unix seconds after which :func:`verify` refuses the signature.
    """
    if any(char.isspace() for char in file):
        raise ValueError(f"file name must not hold spaces, tabs or line breaks, got {file!r}")
    stamp = int(time.time() if timestamp is None else timestamp)
    comment = f"timestamp:{stamp}\tfile:{file}"
    if expires is not None:
        comment += f"\texpires:{int(expires)}"
    return comment


def sign(data: bytes, key: SigningKey, *, trusted_comment: str, prehashed: bool = True) -> str:
    """Sign ``data``; return the ``.minisig`` text.

    Args:
        data: the file's content.
        key: the signing key.
        trusted_comment: one line, covered by the signature (see :func:`make_trusted_comment`).
        prehashed: sign BLAKE2b-512 of ``data`` (``ED``, minisign's default) rather than the
            raw data (``Ed``, legacy).
    """
    if "\r" in trusted_comment or "\n" in trusted_comment:
        raise ValueError("trusted comment must be one line")
    algorithm = _ALG_PREHASHED if prehashed else _ALG_ED25519
    message = hashlib.blake2b(data).digest() if prehashed else data
    signature = key._sign(message)
    comment = trusted_comment.encode("utf-8")
    global_signature = key._sign(signature + comment)
    return (
        f"{_UNTRUSTED_PREFIX}signature from {_SECRET_COMMENT} {key.key_id_hex}\n"
        f"{base64.b64encode(algorithm + key.key_id + signature).decode('ascii')}\n"
        f"{_TRUSTED_PREFIX}{trusted_comment}\n"
        f"{base64.b64encode(global_signature).decode('ascii')}\n"
    )


@attrs.frozen
class Verified:
    """What a good signature told us."""

    key_id: str
    """The signer's key id, as minisign prints it."""
    trusted_comment: str
    expires: float | None
    """The trusted comment's ``expires:`` time, if it has one."""


@attrs.frozen
class _ParsedSignature:
    algorithm: bytes
    key_id: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes


def _parse_signature(text: str) -> _ParsedSignature:
    what = "signature"
    lines = _lines(text, what=what, count=4)
    _untrusted(lines[0], what=what)
    raw = _decode_b64(lines[1], what=f"{what} line 2", length=2 + _KEY_ID_LEN + _SIG_LEN)
    if raw[:2] not in (_ALG_PREHASHED, _ALG_ED25519):
        raise SignatureError(f"{what}: expected algorithm 'ED' or 'Ed', got {raw[:2]!r}")
    if not lines[2].startswith(_TRUSTED_PREFIX):
        raise SignatureError(f"{what}: line 3 must start with {_TRUSTED_PREFIX!r}")
    global_signature = _decode_b64(lines[3], what=f"{what} line 4", length=_SIG_LEN)
    return _ParsedSignature(
        algorithm=raw[:2],
        key_id=raw[2:10],
        signature=raw[10:],
        trusted_comment=lines[2][len(_TRUSTED_PREFIX) :],
        global_signature=global_signature,
    )


def trusted_fields(comment: str) -> dict[str, list[str]]:
    """A trusted comment's ``name:value`` fields, as minisign writes them: separated by
    tabs or spaces; a word without a colon (minisign's ``hashed``) is not a field."""
    fields: dict[str, list[str]] = {}
    for word in comment.split():
        name, sep, value = word.partition(":")
        if sep and name:
            fields.setdefault(name, []).append(value)
    return fields


def _parse_expires(comment: str, key_id: str) -> float | None:
    values = trusted_fields(comment).get("expires")
    if values is None:
        return None
    if len(values) > 1:
        raise SignatureError(
            f"signature by key {key_id}: its trusted comment gives expires {len(values)} times"
            f" ({', '.join(values)}); give it once"
        )
    (value,) = values
    if not _UNIX_SECONDS.fullmatch(value):
        raise SignatureError(
            f"signature by key {key_id}: expires must be unix seconds, got {value!r}"
            " (the trusted comment's expires:<seconds since 1970>, such as expires:1767225600)"
        )
    return float(value)


def _check(public: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def verify(
    data: bytes,
    signature_text: str,
    trusted: Sequence[PublicKey],
    *,
    revoked_key_ids: Collection[bytes | str] = (),
    now: float | None = None,
) -> Verified:
    """Check a ``.minisig`` over ``data`` against the trusted keys.

    Args:
        data: the signed file's content.
        signature_text: the ``.minisig`` text (from minisign or :func:`sign`).
        trusted: the keys we trust (see :func:`load_trusted_keys`).
        revoked_key_ids: raw 8-byte ids or 16-hex-digit ids (see :func:`load_revocations`).
        now: the time to judge ``expires:`` against; the wall clock if ``None``.

    Raises:
        SignatureError: the signature text is malformed.
        RevokedKey: its key is revoked (checked first: revocation wins over trust).
        UntrustedKey: its key is not among ``trusted``.
        BadSignature: the data was tampered with, or the trusted comment was.
        ExpiredSignature: the (authentic) trusted comment's ``expires:`` has passed.
    """
    parsed = _parse_signature(signature_text)
    key_id = key_id_hex(parsed.key_id)
    if key_id in {_normalize_key_id(revoked) for revoked in revoked_key_ids}:
        raise RevokedKey(key_id)
    public = next((key for key in trusted if key.key_id == parsed.key_id), None)
    if public is None:
        raise UntrustedKey(key_id)
    prehashed = parsed.algorithm == _ALG_PREHASHED
    message = hashlib.blake2b(data).digest() if prehashed else data
    if not _check(public.key, parsed.signature, message):
        raise BadSignature(f"signature by key {key_id} does not match the data: tampered")
    comment = parsed.trusted_comment.encode("utf-8")
    if not _check(public.key, parsed.global_signature, parsed.signature + comment):
        raise BadSignature(
            f"signature by key {key_id} does not match its trusted comment: tampered"
        )
    expires = _parse_expires(parsed.trusted_comment, key_id)
    when = time.time() if now is None else now
    if expires is not None and when >= expires:
        raise ExpiredSignature(key_id, expires, when)
    return Verified(key_id=key_id, trusted_comment=parsed.trusted_comment, expires=expires)


def load_trusted_keys(folder: Path) -> list[PublicKey]:
    """Every ``*.pub`` in ``folder`` (``$CWS_HOME/trusted_keys``), in file-name order.

    A missing folder trusts no one and gives an empty list.

    Raises:
        SignatureError: a file is unreadable or malformed, or two files hold different
            keys under the same id; the message names the file.
    """
    if not folder.is_dir():
        return []
    keys: dict[bytes, tuple[PublicKey, Path]] = {}
    for path in sorted(folder.glob("*.pub")):
        try:
            key = PublicKey.from_minisign(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise SignatureError(f"trusted key {path}: cannot read it: {exc}") from None
        except SignatureError as exc:
            raise SignatureError(f"trusted key {path}: {exc}") from None
        seen = keys.get(key.key_id)
        if seen is not None and seen[0] != key:
            raise SignatureError(
                f"trusted key {path}: id {key.key_id_hex} is also in {seen[1]} with a different key"
            )
        keys.setdefault(key.key_id, (key, path))
    return [key for key, _ in keys.values()]


def load_revocations(path: Path) -> set[str]:
    """The revoked key ids in ``path`` (``$CWS_HOME/revoked_keys``), upper-case hex.

    One 16-hex-digit id per line (as minisign prints it); ``#`` starts a comment; blank
    lines are allowed. A missing file revokes nothing.

    Raises:
        SignatureError: unreadable, or a line is not a key id; the message names the line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    except (OSError, UnicodeDecodeError) as exc:
        raise SignatureError(f"revocation file {path}: cannot read it: {exc}") from None
    revoked: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not _KEY_ID_HEX.fullmatch(entry):
            raise SignatureError(
                f"revocation file {path}, line {number}: expected a 16-hex-digit key id, "
                f"got {entry!r}"
            )
        revoked.add(entry.upper())
    return revoked
