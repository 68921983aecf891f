"""`roamlink keygen` / `pubkey` (subprocesses) and the CLI's known_hosts store (in-process)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from roamlink.cli.known_hosts import KnownHosts, KnownHostsError, config_dir, host_entry
from roamlink.keys import KeyPair, encode_key
from tests.support.paths import PACKAGE_PARENT

ROOT = Path(__file__).resolve().parent.parent
SRC = PACKAGE_PARENT  # the roamlink under test (installed or src/)
posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def roamlink(*args: str, config_dir: Path, stdin: bytes = b"",
             ) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=SRC, ROAMLINK_CONFIG_DIR=str(config_dir))
    env.pop("ROAMLINK_FORCE_TTY", None)
    return subprocess.run([sys.executable, "-m", "roamlink", *args], input=stdin,
                          capture_output=True, timeout=30, cwd=ROOT, env=env)


# ---------------------------------------------------------------------------- keygen / pubkey
@posix_only
def test_keygen_file_writes_0600_key_and_prints_only_its_public_key(tmp_path: Path) -> None:
    path = tmp_path / "client.key"
    res = roamlink("keygen", str(path), config_dir=tmp_path / "cfg")
    assert res.returncode == 0, res.stderr.decode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = KeyPair.load(path)
    assert res.stdout.decode() == key.public + "\n"  # stdout: the public key, nothing else
    assert str(path) in res.stderr.decode()
    assert path.read_text().strip() not in (res.stdout + res.stderr).decode()
    assert not (tmp_path / "cfg").exists()  # an explicit FILE touches no config directory


@posix_only
def test_keygen_default_is_the_server_key_in_a_0700_config_dir(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    res = roamlink("keygen", config_dir=cfg)
    assert res.returncode == 0, res.stderr.decode()
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o700
    key = KeyPair.load(cfg / "server.key")
    assert res.stdout.decode().strip() == key.public
    # pubkey without FILE shows the same key
    res = roamlink("pubkey", config_dir=cfg)
    assert res.returncode == 0 and res.stdout.decode().strip() == key.public


def test_keygen_never_replaces_a_key_without_force(tmp_path: Path) -> None:
    path = tmp_path / "k"
    first = roamlink("keygen", str(path), config_dir=tmp_path)
    again = roamlink("keygen", str(path), config_dir=tmp_path)
    assert again.returncode == 1
    assert b"already exists" in again.stderr and b"--force" in again.stderr
    assert KeyPair.load(path).public == first.stdout.decode().strip()
    forced = roamlink("keygen", str(path), "--force", config_dir=tmp_path)
    assert forced.returncode == 0
    assert KeyPair.load(path).public == forced.stdout.decode().strip() != first.stdout.decode()


def test_keygen_dash_prints_a_private_key_that_pubkey_reads(tmp_path: Path) -> None:
    res = roamlink("keygen", "-", config_dir=tmp_path)
    assert res.returncode == 0
    private = res.stdout.decode().strip()
    public = res.stderr.decode().split()[-1]
    shown = roamlink("pubkey", "-", stdin=private.encode() + b"\n", config_dir=tmp_path)
    assert shown.returncode == 0 and shown.stdout.decode().strip() == public
    bad = roamlink("pubkey", "-", stdin=b"nope\n", config_dir=tmp_path)
    assert bad.returncode == 2 and b"base64" in bad.stderr


def test_keygen_json(tmp_path: Path) -> None:
    res = roamlink("--json", "keygen", str(tmp_path / "k"), config_dir=tmp_path)
    obj = json.loads(res.stdout)
    assert obj["event"] == "keygen" and obj["path"] == str(tmp_path / "k")
    assert obj["public_key"] == KeyPair.load(tmp_path / "k").public


@posix_only
def test_pubkey_refuses_a_world_readable_key_like_ssh(tmp_path: Path) -> None:
    path = tmp_path / "k"
    KeyPair.generate().save(path)
    os.chmod(path, 0o644)
    res = roamlink("pubkey", str(path), config_dir=tmp_path)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert "UNPROTECTED PRIVATE KEY FILE" in err and "0644" in err and "chmod 600" in err
    assert res.stdout == b""
    assert path.read_text().strip() not in err


def test_pubkey_missing_file(tmp_path: Path) -> None:
    res = roamlink("pubkey", str(tmp_path / "none"), config_dir=tmp_path)
    assert res.returncode == 1 and b"no such key file" in res.stderr


# ---------------------------------------------------------------------------- known_hosts
def test_config_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROAMLINK_CONFIG_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "x"))
    assert config_dir() == tmp_path / "a"
    monkeypatch.delenv("ROAMLINK_CONFIG_DIR")
    assert config_dir() == tmp_path / "x" / "roamlink"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_dir() == tmp_path / "home" / ".config" / "roamlink"


def test_host_entry_forms() -> None:
    assert host_entry("127.0.0.1", 4433) == "127.0.0.1:4433"
    assert host_entry("Server.Example", 1) == "server.example:1"
    assert host_entry("::1", 4433) == "[::1]:4433"
    assert host_entry("[::1]", 4433) == "[::1]:4433"


@posix_only
def test_known_hosts_add_and_lookup(tmp_path: Path) -> None:
    store = KnownHosts(tmp_path / "dir" / "known_hosts")
    assert store.lookup("127.0.0.1", 4433) == []
    a, b, c = (KeyPair.generate().public_bytes for _ in range(3))
    store.add("127.0.0.1", 4433, a)
    store.add("::1", 4433, b)
    store.add("127.0.0.1", 4434, c)
    assert [k.key for k in store.lookup("127.0.0.1", 4433)] == [a]
    assert [k.key for k in store.lookup("::1", 4433)] == [b]
    assert [k.key for k in store.lookup("127.0.0.1", 4434)] == [c]
    assert store.lookup("127.0.0.2", 4433) == []
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    lines = store.path.read_text().splitlines()
    assert lines[1] == f"[::1]:4433 {encode_key(b)}"


def test_known_hosts_comments_and_missing_final_newline(tmp_path: Path) -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    path = tmp_path / "known_hosts"
    path.write_text(f"# pinned by hand\n\nhost.example:4433 {a.public}")  # no final newline
    store = KnownHosts(path)
    assert [k.key for k in store.lookup("HOST.example", 4433)] == [a.public_bytes]
    added = store.add("host.example", 4433, b.public_bytes)  # a rotation: both accepted
    assert added.line == 4 and path.read_text().splitlines()[3].endswith(b.public)
    assert [k.key for k in store.lookup("host.example", 4433)] == [a.public_bytes,
                                                                    b.public_bytes]


@pytest.mark.parametrize("line", ["127.0.0.1:4433", "127.0.0.1 KEY", "127.0.0.1:4433 nope",
                                  "127.0.0.1:99999 KEY", "a:1 KEY extra"])
def test_known_hosts_malformed_line_is_an_error_not_skipped(tmp_path: Path, line: str) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"ok.example:1 {KeyPair.generate().public}\n"
                    + line.replace("KEY", KeyPair.generate().public) + "\n")
    with pytest.raises(KnownHostsError, match="line 2"):
        KnownHosts(path).lookup("127.0.0.1", 4433)
