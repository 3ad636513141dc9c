"""``cws plugin keygen`` and ``cws plugin sign`` against Debian's real minisign, both
ways: what minisign signs (with its keys, or with ours) verifies here, with its trusted
comments read as minisign writes them; what we sign (with our keys, or with minisign's)
passes ``minisign -V``."""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import trio

from cws_actors._packaging._signing import (
    ExpiredSignature,
    PublicKey,
    SignatureError,
    verify,
)

from ._cws import CWS, TIMEOUT, cws, cws_env, expect

PAYLOAD = b"a plugin archive, or any file\n"
PASSWORD = "correct horse battery staple"


def minisign() -> str:
    found = shutil.which("minisign")
    if found is None:
        pytest.fail("this test needs Debian's minisign: `apt-get install minisign`")
    return found


async def run_minisign(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT * 2):  # scrypt with 1 GiB takes a few seconds
        return await trio.run_process(
            [minisign(), *args], stdin=stdin, capture_stdout=True, capture_stderr=True,
            check=False,
        )  # fmt: skip


async def minisign_verifies(file: Path, public: Path) -> str:
    done = await run_minisign("-V", "-m", str(file), "-p", str(public))
    out = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, out
    assert "Signature and comment signature verified" in out
    return out


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "echo.cwsplugin"
    path.write_bytes(PAYLOAD)
    return path


async def minisign_signs(payload: Path, key: Path, comment: str, *, stdin: bytes = b"") -> str:
    signature = payload.with_name(payload.name + ".minisig")
    done = await run_minisign("-S", "-s", str(key), "-m", str(payload), "-x", str(signature),
                              "-t", comment, stdin=stdin)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return signature.read_text()


async def test_minisign_signatures_verify_here_with_space_separated_comments(
    payload: Path, tmp_path: Path
) -> None:
    key, pub = tmp_path / "m.key", tmp_path / "m.pub"
    made = await run_minisign("-G", "-W", "-s", str(key), "-p", str(pub))
    assert made.returncode == 0, made.stderr
    trusted = [PublicKey.from_minisign(pub.read_text())]

    # Expired in 2020, written with spaces as people type them: refused.
    text = await minisign_signs(payload, key, "timestamp:1700000000 file:x expires:1600000000")
    with pytest.raises(ExpiredSignature, match="expired at 1600000000"):
        verify(PAYLOAD, text, trusted)
    # An unknown key beside expires is ignored; the expiry is read.
    text = await minisign_signs(payload, key, "expires:4000000000 reason:test")
    assert verify(PAYLOAD, text, trusted).expires == 4_000_000_000
    with pytest.raises(ExpiredSignature):
        verify(PAYLOAD, text, trusted, now=4_000_000_000)
    # A malformed expires is refused with a message saying what is expected.
    text = await minisign_signs(payload, key, "timestamp:1700000000 expires:soon")
    with pytest.raises(SignatureError, match=r"expires must be unix seconds, got 'soon' \(the"):
        verify(PAYLOAD, text, trusted)
    # minisign's own default comment (tabs and its bare word "hashed") has no expiry.
    default = await run_minisign("-S", "-s", str(key), "-m", str(payload))
    assert default.returncode == 0
    signature = payload.with_name(payload.name + ".minisig").read_text()
    assert "\thashed" in signature
    assert verify(PAYLOAD, signature, trusted).expires is None


@pytest.mark.parametrize("legacy", [False, True], ids=["prehashed", "legacy"])
async def test_cws_keys_and_signatures_pass_minisign(
    payload: Path, tmp_path: Path, legacy: bool
) -> None:
    env = cws_env(tmp_path / "home")
    key, pub = tmp_path / "cws.key", tmp_path / "cws.pub"
    made = await cws("plugin", "keygen", "--unencrypted", "--secret-key", str(key),
                     "--public-key", str(pub), env=env)  # fmt: skip
    expect(made, 0, err="minisign -Vm <file> -P RW")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key_id = made.out.strip()
    assert PublicKey.from_minisign(pub.read_text()).key_id_hex == key_id

    flags = ["--legacy"] if legacy else []
    signed = await cws("plugin", "sign", str(payload), "--secret-key", str(key),
                       "--expires", "30d", *flags, env=env)  # fmt: skip
    expect(signed, 0, err=f"with key {key_id}, expires at ")
    out = await minisign_verifies(payload, pub)
    assert f"file:{payload.name}" in out
    assert ("\thashed" in out) is not legacy
    text = payload.with_name(payload.name + ".minisig").read_text()
    algorithm = base64.b64decode(text.splitlines()[1])[:2]
    assert algorithm == (b"Ed" if legacy else b"ED")
    verified = verify(PAYLOAD, text, [PublicKey.from_minisign(pub.read_text())])
    assert verified.expires is not None

    # minisign signs with the secret key cws wrote, and we verify that too.
    mine = await minisign_signs(payload, key, "timestamp:1700000000 file:x")
    assert verify(PAYLOAD, mine, [PublicKey.from_minisign(pub.read_text())]).key_id == key_id


async def test_encrypted_keys_work_both_ways(payload: Path, tmp_path: Path) -> None:
    password = (PASSWORD + "\n").encode()
    # A key cws encrypted (password from the environment), used by minisign -S.
    env = cws_env(tmp_path / "home", CWS_SIGNING_PASSWORD=PASSWORD)
    key, pub = tmp_path / "cws.key", tmp_path / "cws.pub"
    made = await cws("plugin", "keygen", "--secret-key", str(key), "--public-key", str(pub),
                     env=env)  # fmt: skip
    expect(made, 0)
    assert "minisign encrypted secret key" in key.read_text()
    text = await minisign_signs(payload, key, "file:x", stdin=password)
    assert verify(PAYLOAD, text, [PublicKey.from_minisign(pub.read_text())])

    # A key minisign encrypted, used by cws plugin sign (password on standard input).
    mkey, mpub = tmp_path / "m.key", tmp_path / "m.pub"
    made_m = await run_minisign("-G", "-s", str(mkey), "-p", str(mpub), stdin=password * 2)
    assert made_m.returncode == 0, made_m.stderr
    plain_env = cws_env(tmp_path / "home")
    with trio.fail_after(TIMEOUT * 2):
        done = await trio.run_process(
            [CWS, "plugin", "sign", str(payload), "--secret-key", str(mkey)],
            stdin=password, capture_stdout=True, capture_stderr=True, check=False,
            env=plain_env,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    await minisign_verifies(payload, mpub)

    # A wrong password is refused, saying so.
    wrong = await cws("plugin", "sign", str(payload), "--secret-key", str(mkey),
                      env=plain_env | {"CWS_SIGNING_PASSWORD": "nope"})  # fmt: skip
    expect(wrong, 1, err="wrong password")


async def test_keygen_refuses_to_overwrite_and_sign_needs_a_key(
    payload: Path, tmp_path: Path
) -> None:
    env = cws_env(tmp_path / "home")
    key, pub = tmp_path / "k.key", tmp_path / "k.pub"
    args = ["plugin", "keygen", "--unencrypted", "--secret-key", str(key), "--public-key",
            str(pub)]  # fmt: skip
    expect(await cws(*args, env=env), 0)
    expect(await cws(*args, env=env), 1, err="exists; pass --force")
    expect(await cws(*args, "--force", env=env), 0)
    missing = tmp_path / "none.key"
    expect(await cws("plugin", "sign", str(payload), "--secret-key", str(missing), env=env),
           1, err="make one with `cws plugin keygen`")  # fmt: skip
    expect(await cws("plugin", "sign", str(payload), "--secret-key", str(key),
                     "--expires", "soon", env=env), 2, err="a duration such as 90d")  # fmt: skip
    # An encrypted key without any password is a usage error, not a hang.
    env_pw = env | {"CWS_SIGNING_PASSWORD": ""}
    expect(await cws("plugin", "keygen", "--secret-key", str(tmp_path / "e.key"),
                     "--public-key", str(tmp_path / "e.pub"), env=env_pw), 2,
           err="no password")  # fmt: skip
