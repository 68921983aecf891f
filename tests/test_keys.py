"""Static key pairs and key files (roamlink.keys): formats, file modes, refusals, no leaks."""

from __future__ import annotations

import base64
import os
import pickle
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import roamlink
from roamlink.errors import InvalidKey, KeyFileError, RoamlinkError
from roamlink.keys import KeyPair, parse_public_key

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")

# RFC 7748, section 6.1: Alice's private key and the public key it gives.
RFC7748_PRIVATE = bytes.fromhex(
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC7748_PUBLIC = bytes.fromhex(
    "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def test_public_key_matches_rfc7748_and_is_wireguard_text() -> None:
    key = KeyPair.from_private_bytes(RFC7748_PRIVATE)
    assert key.public_bytes == RFC7748_PUBLIC
    assert key.public == base64.b64encode(RFC7748_PUBLIC).decode()
    assert len(key.public) == 44 and key.public.endswith("=")
    assert key.private_bytes == RFC7748_PRIVATE


def test_generate_gives_distinct_valid_keys() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    assert a != b and a.public != b.public
    # the public key is the one cryptography derives from the private bytes
    derived = X25519PrivateKey.from_private_bytes(a.private_bytes).public_key()
    assert derived.public_bytes_raw() == a.public_bytes
    assert KeyPair.from_private_bytes(a.private_bytes) == a


def test_exchange_agrees_both_ways() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    assert a.exchange(b.public_bytes) == b.exchange(a.public_bytes)
    assert len(a.exchange(b.public_bytes)) == 32


def test_private_key_never_in_repr_str_or_pickle() -> None:
    key = KeyPair.generate()
    secret_b64 = base64.b64encode(key.private_bytes).decode()
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert secret_b64 not in text
        assert key.private_bytes.hex() not in text
        assert key.public in text
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_exported_from_package_root() -> None:
    assert roamlink.KeyPair is KeyPair
    assert issubclass(roamlink.HandshakeFailed, RoamlinkError)
    assert issubclass(roamlink.KeyFileError, RoamlinkError)
    assert issubclass(roamlink.InvalidKey, ValueError)
    err = roamlink.HandshakeFailed("server key mismatch", "server_key_mismatch")
    assert err.reason == "server_key_mismatch"
    assert isinstance(err, roamlink.errors.ConnectError)


# ---------------------------------------------------------------------------- public keys
def test_parse_public_key_accepts_text_raw_and_ascii_bytes() -> None:
    key = KeyPair.generate()
    assert parse_public_key(key.public) == key.public_bytes
    assert parse_public_key(f"  {key.public}\n") == key.public_bytes
    assert parse_public_key(key.public_bytes) == key.public_bytes
    assert parse_public_key(key.public.encode()) == key.public_bytes


@pytest.mark.parametrize("bad", [
    "", "hello", "A" * 44, base64.b64encode(b"x" * 31).decode(),
    base64.b64encode(b"x" * 33).decode(), base64.urlsafe_b64encode(b"\xff" * 32).decode(),
    "é" * 44, b"", b"x" * 31, b"\xff" * 44,
])
def test_parse_public_key_refuses_with_a_clear_error(bad: str | bytes) -> None:
    with pytest.raises(InvalidKey) as info:
        parse_public_key(bad)
    assert "32" in str(info.value)
    if isinstance(bad, str) and len(bad) > 8:
        assert bad not in str(info.value)  # never echo what might be a private key


def test_parse_public_key_refuses_other_types() -> None:
    with pytest.raises(TypeError):
        parse_public_key(42)  # type: ignore[arg-type]


def test_from_private_bytes_refuses_wrong_length() -> None:
    with pytest.raises(InvalidKey):
        KeyPair.from_private_bytes(b"\x01" * 31)


# ---------------------------------------------------------------------------- key files
def test_save_and_load_round_trip(tmp_path: Path) -> None:
    key = KeyPair.generate()
    path = tmp_path / "server.key"
    key.save(path)
    assert KeyPair.load(path) == key
    assert KeyPair.load(str(path)).public == key.public
    # the documented format: the base64 private key on one line
    assert path.read_text() == base64.b64encode(key.private_bytes).decode() + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["server.key"]  # no temporary left


@posix_only
def test_saved_file_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        KeyPair.generate().save(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_save_refuses_to_replace_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "k"
    first, second = KeyPair.generate(), KeyPair.generate()
    first.save(path)
    with pytest.raises(KeyFileError, match="already exists"):
        second.save(path)
    assert KeyPair.load(path) == first
    second.save(path, overwrite=True)
    assert KeyPair.load(path) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_save_into_missing_directory_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as info:
        KeyPair.generate().save(tmp_path / "nope" / "k")
    assert info.value.path.endswith("k")


def test_wireguard_genkey_output_loads(tmp_path: Path) -> None:
    # `wg genkey` writes base64 of 32 bytes and a newline: the same format
    path = tmp_path / "wg.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, base64.b64encode(RFC7748_PRIVATE) + b"\n")
    os.close(fd)
    assert KeyPair.load(path).public_bytes == RFC7748_PUBLIC


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_load_refuses_a_key_that_others_can_read(tmp_path: Path, mode: int) -> None:
    key = KeyPair.generate()
    path = tmp_path / "k"
    key.save(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as info:
        KeyPair.load(path)
    assert info.value.insecure
    message = str(info.value)
    assert "UNPROTECTED" in message and f"{mode:04o}" in message and "chmod 600" in message
    assert base64.b64encode(key.private_bytes).decode() not in message


@posix_only
def test_load_accepts_owner_only_modes(tmp_path: Path) -> None:
    path = tmp_path / "k"
    key = KeyPair.generate()
    key.save(path)
    os.chmod(path, 0o400)
    assert KeyPair.load(path) == key


@pytest.mark.parametrize("content", [
    b"", b"\n", b"not a key\n", b"QUJD\n", b"\xff\xfe" * 30,
    base64.b64encode(b"k" * 32) + b"\n" + base64.b64encode(b"k" * 32) + b"\n",
    b"x" * 5000,
])
def test_load_refuses_malformed_files_without_echoing_them(tmp_path: Path,
                                                           content: bytes) -> None:
    path = tmp_path / "k"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(KeyFileError) as info:
        KeyPair.load(path)
    assert not info.value.insecure
    assert base64.b64encode(b"k" * 32).decode() not in str(info.value)


def test_load_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file"):
        KeyPair.load(tmp_path / "missing")
    with pytest.raises(KeyFileError, match="not a regular file"):
        KeyPair.load(tmp_path)
