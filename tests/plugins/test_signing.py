"""minisign-format signatures: our own round trip, every refusal, and the real minisign.

The files in ``data/`` were made by the real minisign 0.11 (Debian package), with a
passwordless key whose secret half was thrown away::

    minisign -G -W -p minisign.pub -s /tmp/mskey/minisign.key
    minisign -S -s /tmp/mskey/minisign.key -m minisign-payload.txt \\
        -t "$(printf 'timestamp:1700000000\\tfile:minisign-payload.txt')"
    minisign -S -l -s /tmp/mskey/minisign.key -m minisign-legacy.txt      # legacy "Ed"
    minisign -S -s /tmp/mskey/minisign.key -m minisign-expiring.txt \\
        -t "$(printf 'timestamp:1700000000\\tfile:minisign-expiring.txt\\texpires:1700003600')"

Our own signatures were also checked the other way, with ``minisign -V -p key.pub -m file``.
"""

from __future__ import annotations

import base64
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from cws_actors._packaging._signing import (
    BadSignature,
    ExpiredSignature,
    PublicKey,
    RevokedKey,
    SignatureError,
    SigningKey,
    UntrustedKey,
    Verified,
    _scrypt_parameters,
    generate_keypair,
    load_revocations,
    load_trusted_keys,
    make_trusted_comment,
    secret_key_encrypted,
    sign,
    verify,
)

DATA = Path(__file__).parent / "data"
MINISIGN_KEY_ID = "94263A8B02C93B24"
NOW = 1_700_000_100.0
PAYLOAD = b"plugin archive bytes\x00\xff"


@pytest.fixture
def key() -> SigningKey:
    return generate_keypair()


def _signed(key: SigningKey, *, expires: float | None = None, prehashed: bool = True) -> str:
    comment = make_trusted_comment(file="echo.cwsplugin", timestamp=1_700_000_000, expires=expires)
    return sign(PAYLOAD, key, trusted_comment=comment, prehashed=prehashed)


def _replace_line(text: str, index: int, line: str) -> str:
    lines = text.splitlines()
    lines[index] = line
    return "\n".join(lines) + "\n"


def test_round_trip(key: SigningKey) -> None:
    result = verify(PAYLOAD, _signed(key, expires=NOW + 60), [key.public_key()], now=NOW)
    assert result == Verified(
        key_id=key.key_id_hex,
        trusted_comment="timestamp:1700000000\tfile:echo.cwsplugin\texpires:1700000160",
        expires=NOW + 60,
    )


def test_signature_format_is_minisign(key: SigningKey) -> None:
    lines = _signed(key).splitlines()
    assert lines[0].startswith("untrusted comment: ")
    raw = base64.b64decode(lines[1])
    assert (raw[:2], raw[2:10], len(raw)) == (b"ED", key.key_id, 74)
    assert lines[2] == "trusted comment: timestamp:1700000000\tfile:echo.cwsplugin"
    assert len(base64.b64decode(lines[3])) == 64


def test_legacy_unhashed_signature_verifies(key: SigningKey) -> None:
    text = _signed(key, prehashed=False)
    assert base64.b64decode(text.splitlines()[1])[:2] == b"Ed"
    assert verify(PAYLOAD, text, [key.public_key()]).key_id == key.key_id_hex
    with pytest.raises(BadSignature, match="does not match the data: tampered"):
        verify(PAYLOAD + b"!", text, [key.public_key()])


def test_public_key_round_trips_through_minisign_text(key: SigningKey) -> None:
    public = key.public_key()
    text = public.to_minisign()
    assert text.startswith(f"untrusted comment: minisign public key {key.key_id_hex}\n")
    assert PublicKey.from_minisign(text) == public
    assert PublicKey.from_minisign(text.splitlines()[1]) == public  # as `minisign -P` takes


def test_tampered_data_is_a_bad_signature(key: SigningKey) -> None:
    with pytest.raises(BadSignature, match="does not match the data: tampered"):
        verify(PAYLOAD[:-1] + b"\x00", _signed(key), [key.public_key()])


def test_tampered_trusted_comment_is_a_bad_signature(key: SigningKey) -> None:
    text = _signed(key, expires=NOW - 1)
    forged = _replace_line(
        text, 2, "trusted comment: timestamp:1700000000\tfile:echo.cwsplugin\texpires:9999999999"
    )
    with pytest.raises(BadSignature, match="does not match its trusted comment"):
        verify(PAYLOAD, forged, [key.public_key()], now=NOW)


def test_signature_by_another_key_with_the_same_id_is_bad(key: SigningKey) -> None:
    impostor = SigningKey(key_id=key.key_id, seed=generate_keypair().seed)
    with pytest.raises(BadSignature, match="tampered"):
        verify(PAYLOAD, _signed(impostor), [key.public_key()])


def test_unknown_key_is_untrusted(key: SigningKey) -> None:
    other = generate_keypair()
    with pytest.raises(UntrustedKey, match=f"key {key.key_id_hex}, which is not a trusted"):
        verify(PAYLOAD, _signed(key), [other.public_key()])
    with pytest.raises(UntrustedKey):
        verify(PAYLOAD, _signed(key), [])


@pytest.mark.parametrize("form", ["hex", "lower", "bytes"])
def test_revoked_key_is_refused(key: SigningKey, form: str) -> None:
    revoked: bytes | str = {
        "hex": key.key_id_hex,
        "lower": key.key_id_hex.lower(),
        "bytes": key.key_id,
    }[form]
    with pytest.raises(RevokedKey, match=f"key {key.key_id_hex}, which has been revoked"):
        verify(PAYLOAD, _signed(key), [key.public_key()], revoked_key_ids=[revoked])


def test_revoked_id_must_be_a_key_id(key: SigningKey) -> None:
    with pytest.raises(ValueError, match="8 bytes or 16 hex digits, got 'nope'"):
        verify(PAYLOAD, _signed(key), [key.public_key()], revoked_key_ids=["nope"])


def test_expired_signature_is_refused(key: SigningKey) -> None:
    text = _signed(key, expires=NOW)
    with pytest.raises(ExpiredSignature, match="expired at 1700000100 \\(it is now 1700000100\\)"):
        verify(PAYLOAD, text, [key.public_key()], now=NOW)
    assert verify(PAYLOAD, text, [key.public_key()], now=NOW - 1).expires == NOW


def test_malformed_expiry_is_a_signature_error(key: SigningKey) -> None:
    text = sign(PAYLOAD, key, trusted_comment="file:x\texpires:soon")
    with pytest.raises(SignatureError, match="expires must be unix seconds, got 'soon'"):
        verify(PAYLOAD, text, [key.public_key()])


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda text: "", "expected 4 lines, got 0"),
        (lambda text: "\n".join(text.splitlines()[:3]), "expected 4 lines, got 3"),
        (lambda text: _replace_line(text, 0, "hello"), "line 1 must start with 'untrusted"),
        (lambda text: _replace_line(text, 1, "not base64!"), "line 2: expected base64"),
        (lambda text: _replace_line(text, 1, "RUQkO8kC"), "expected 74 bytes once decoded, got 6"),
        (
            lambda text: _replace_line(text, 1, base64.b64encode(b"XX" + bytes(72)).decode()),
            "expected algorithm 'ED' or 'Ed', got b'XX'",
        ),
        (lambda text: _replace_line(text, 2, "comment: x"), "line 3 must start with 'trusted"),
        (lambda text: _replace_line(text, 3, "AAAA"), "line 4: expected 64 bytes"),
    ],
)
def test_malformed_signature_says_what_is_wrong(
    key: SigningKey, mangle: Callable[[str], str], message: str
) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(PAYLOAD, mangle(_signed(key)), [key.public_key()])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected an 'untrusted comment:' line and a base64 line, got 0"),
        ("untrusted comment: x\n!!!!\n", "public key: expected base64"),
        ("untrusted comment: x\nAAAA\n", "expected 42 bytes once decoded, got 3"),
        (
            "untrusted comment: x\n" + base64.b64encode(b"XY" + bytes(40)).decode(),
            "expected algorithm 'Ed', got b'XY'",
        ),
    ],
)
def test_malformed_public_key_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        PublicKey.from_minisign(text)


def test_signing_key_is_saved_owner_only_and_loads_back(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("untrusted comment: cws-actors secret key ")
    assert SigningKey.load(path) == key
    assert key.seed.hex() not in repr(key)
    with pytest.raises(FileExistsError):
        key.save(path)


def test_signing_key_readable_by_others_is_refused(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    key.save(path)
    path.chmod(0o644)
    with pytest.raises(SignatureError, match="mode 0644 lets others read it; chmod 600 it"):
        SigningKey.load(path)


def test_a_truncated_minisign_secret_key_says_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "minisign.key"
    path.write_text("untrusted comment: minisign encrypted secret key\nRWQAAEIy\n")
    path.chmod(0o600)
    with pytest.raises(SignatureError, match="expected 158 bytes once decoded, got 6"):
        SigningKey.load(path)


# Light scrypt parameters keep these fast; the real minisign's (1 GiB) are exercised in
# tests/cli/test_signing.py, where minisign itself reads and writes the keys.
LIGHT = {"opslimit": 32768, "memlimit": 1 << 20}


def test_minisign_secret_key_round_trips_encrypted(key: SigningKey, tmp_path: Path) -> None:
    text = key.to_minisign("s3cret", **LIGHT)
    assert text.startswith("untrusted comment: minisign encrypted secret key\n")
    assert secret_key_encrypted(text)
    assert SigningKey.from_minisign(text, password="s3cret") == key
    with pytest.raises(SignatureError, match="wrong password"):
        SigningKey.from_minisign(text, password="S3cret")
    with pytest.raises(SignatureError, match="the key is encrypted; its password is needed"):
        SigningKey.from_minisign(text)
    path = tmp_path / "minisign.key"
    path.write_text(text)
    path.chmod(0o600)
    assert SigningKey.load(path, password="s3cret") == key


def test_minisign_secret_key_round_trips_unencrypted(key: SigningKey) -> None:
    text = key.to_minisign(None)
    assert not secret_key_encrypted(text)
    assert SigningKey.from_minisign(text) == key
    raw = bytearray(base64.b64decode(text.splitlines()[1]))
    raw[60] ^= 1  # a bit of the secret key
    damaged = f"untrusted comment: x\n{base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(SignatureError, match="checksum does not match: the file is damaged"):
        SigningKey.from_minisign(damaged)


def test_scrypt_parameters_are_libsodiums() -> None:
    # minisign's opslimit and memlimit give N = 2^20, r = 8, p = 1 (1 GiB).
    assert _scrypt_parameters(33_554_432, 1_073_741_824) == (1 << 20, 8, 1)
    assert _scrypt_parameters(32768, 1 << 20) == (1 << 10, 8, 1)


@pytest.mark.parametrize(
    "comment",
    [
        "timestamp:1700000000 file:x expires:1600000000",  # spaces, as typed after -t
        "timestamp:1700000000\tfile:x\thashed\texpires:1600000000",  # tabs, minisign's
        "expires:1600000000 reason:test",  # an unknown key is ignored
        "timestamp:1700000000  file:x \t expires:1600000000 ",  # runs of both
    ],
)
def test_expires_is_read_however_minisign_separates_fields(key: SigningKey, comment: str) -> None:
    text = sign(PAYLOAD, key, trusted_comment=comment)
    with pytest.raises(ExpiredSignature, match="expired at 1600000000"):
        verify(PAYLOAD, text, [key.public_key()])
    assert verify(PAYLOAD, text, [key.public_key()], now=1_500_000_000).expires == 1_600_000_000


@pytest.mark.parametrize(
    ("comment", "message"),
    [
        ("file:x expires:soon", "expires must be unix seconds, got 'soon'"),
        ("file:x expires:", "expires must be unix seconds, got ''"),
        ("file:x expires:1e12", "expires must be unix seconds, got '1e12'"),
        ("file:x expires:nan", "expires must be unix seconds, got 'nan'"),
        ("expires:1 expires:4000000000", "gives expires 2 times \\(1, 4000000000\\); give it once"),
    ],
)
def test_a_malformed_expiry_is_refused_saying_why(
    key: SigningKey, comment: str, message: str
) -> None:
    text = sign(PAYLOAD, key, trusted_comment=comment)
    with pytest.raises(SignatureError, match=message):
        verify(PAYLOAD, text, [key.public_key()])


def test_our_trusted_comment_keeps_its_fields_apart() -> None:
    with pytest.raises(ValueError, match="must not hold spaces"):
        make_trusted_comment(file="my plugin expires:1.cwsplugin")


def test_real_minisign_signature_verifies() -> None:
    public = PublicKey.from_minisign((DATA / "minisign.pub").read_text())
    assert public.key_id_hex == MINISIGN_KEY_ID
    data = (DATA / "minisign-payload.txt").read_bytes()
    signature = (DATA / "minisign-payload.txt.minisig").read_text()
    assert verify(data, signature, [public]) == Verified(
        key_id=MINISIGN_KEY_ID,
        trusted_comment="timestamp:1700000000\tfile:minisign-payload.txt",
        expires=None,
    )
    with pytest.raises(BadSignature, match="tampered"):
        verify(data + b"x", signature, [public])


def test_real_minisign_legacy_signature_verifies() -> None:
    public = PublicKey.from_minisign((DATA / "minisign.pub").read_text())
    data = (DATA / "minisign-legacy.txt").read_bytes()
    signature = (DATA / "minisign-legacy.txt.minisig").read_text()
    assert base64.b64decode(signature.splitlines()[1])[:2] == b"Ed"
    assert verify(data, signature, [public]).key_id == MINISIGN_KEY_ID


def test_real_minisign_expiring_signature() -> None:
    public = PublicKey.from_minisign((DATA / "minisign.pub").read_text())
    data = (DATA / "minisign-expiring.txt").read_bytes()
    signature = (DATA / "minisign-expiring.txt.minisig").read_text()
    assert verify(data, signature, [public], now=1_700_000_000).expires == 1_700_003_600
    with pytest.raises(ExpiredSignature, match=f"by key {MINISIGN_KEY_ID} expired"):
        verify(data, signature, [public], now=1_700_003_600)


def test_trust_store_reads_every_pub_file(tmp_path: Path) -> None:
    keys = [generate_keypair().public_key() for _ in range(2)]
    (tmp_path / "b.pub").write_text(keys[1].to_minisign())
    (tmp_path / "a.pub").write_text(keys[0].to_minisign())
    (tmp_path / "a.pub.bak").write_text("ignored: not a .pub file")
    (tmp_path / "minisign.pub").write_text((DATA / "minisign.pub").read_text())
    loaded = load_trusted_keys(tmp_path)
    assert [key.key_id_hex for key in loaded] == [
        keys[0].key_id_hex,
        keys[1].key_id_hex,
        MINISIGN_KEY_ID,
    ]
    assert load_trusted_keys(tmp_path / "missing") == []


def test_trust_store_names_the_bad_file(tmp_path: Path) -> None:
    (tmp_path / "good.pub").write_text(generate_keypair().public_key().to_minisign())
    (tmp_path / "broken.pub").write_text("untrusted comment: x\nAAAA\n")
    with pytest.raises(SignatureError, match=r"trusted key .*broken\.pub: public key: expected 42"):
        load_trusted_keys(tmp_path)


def test_trust_store_refuses_two_keys_under_one_id(tmp_path: Path, key: SigningKey) -> None:
    impostor = SigningKey(key_id=key.key_id, seed=generate_keypair().seed)
    (tmp_path / "a.pub").write_text(key.public_key().to_minisign())
    (tmp_path / "b.pub").write_text(impostor.public_key().to_minisign())
    with pytest.raises(SignatureError, match=r"b\.pub: id .* is also in .*a\.pub"):
        load_trusted_keys(tmp_path)


def test_revocations_file(tmp_path: Path) -> None:
    path = tmp_path / "revoked_keys"
    assert load_revocations(path) == set()
    path.write_text(
        "# compromised 2024-03\n94263a8b02c93b24\n\n  D9780441725A3568  # lost laptop\n"
    )
    assert load_revocations(path) == {"94263A8B02C93B24", "D9780441725A3568"}


def test_revocations_file_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "revoked_keys"
    path.write_text("94263A8B02C93B24\nnot-a-key\n")
    with pytest.raises(
        SignatureError, match="line 2: expected a 16-hex-digit key id, got 'not-a-key'"
    ):
        load_revocations(path)


def test_revocation_file_feeds_verify(tmp_path: Path) -> None:
    public = PublicKey.from_minisign((DATA / "minisign.pub").read_text())
    path = tmp_path / "revoked_keys"
    path.write_text(f"{MINISIGN_KEY_ID.lower()}\n")
    with pytest.raises(RevokedKey):
        verify(
            (DATA / "minisign-payload.txt").read_bytes(),
            (DATA / "minisign-payload.txt.minisig").read_text(),
            [public],
            revoked_key_ids=load_revocations(path),
        )


def test_trusted_comment_must_be_one_line(key: SigningKey) -> None:
    with pytest.raises(ValueError, match="one line"):
        sign(PAYLOAD, key, trusted_comment="a\nb")
    with pytest.raises(ValueError, match="must not hold spaces, tabs"):
        make_trusted_comment(file="a\tb")
