"""Whom the CLI trusts (subprocesses over loopback): the server key, --server-key, known_hosts.

Each test has its own config directory (ROAMLINK_CONFIG_DIR), so its server key and
known_hosts are its own.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from roamlink.cli.known_hosts import KnownHosts
from roamlink.keys import KeyPair

from .test_cli import _env, json_lines, roamlink, server

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def _cfg_env(cfg: Path) -> dict[str, str]:
    return _env(ROAMLINK_CONFIG_DIR=str(cfg))


@posix_only
def test_tofu_first_contact_stores_the_key_then_a_changed_key_is_refused(
        tmp_path: Path) -> None:
    server_cfg, client_cfg = tmp_path / "server", tmp_path / "client"
    env = _cfg_env(client_cfg)
    with server("serve", "127.0.0.1:0", "--echo", env=_cfg_env(server_cfg)) as srv:
        # the server made its default key on first run (0600, in a 0700 directory)
        key = KeyPair.load(server_cfg / "server.key")
        assert stat.S_IMODE((server_cfg / "server.key").stat().st_mode) == 0o600
        assert stat.S_IMODE(server_cfg.stat().st_mode) == 0o700
        assert srv.first["public_key"] == key.public

        # first contact: the key is printed and stored
        res = roamlink("connect", srv.addr, stdin=b"hello", env=env)
        assert res.returncode == 0, res.stderr.decode()
        assert res.stdout == b"hello"
        err = res.stderr.decode()
        assert "first contact" in err and key.public in err
        store = KnownHosts(client_cfg / "known_hosts")
        assert [k.key for k in store.lookup("127.0.0.1", srv.first["port"])] == [key.public_bytes]
        assert stat.S_IMODE(store.path.stat().st_mode) == 0o600

        # second contact: pinned, silent about keys, nothing appended
        res = roamlink("connect", srv.addr, stdin=b"again", env=env)
        assert res.returncode == 0 and res.stdout == b"again"
        assert "first contact" not in res.stderr.decode()
        assert len(store.entries()) == 1

        # the pinned key changes (as if the server were replaced, or someone intercepts)
        impostor = KeyPair.generate()
        store.path.write_text(f"127.0.0.1:{srv.first['port']} {impostor.public}\n")
        res = roamlink("connect", srv.addr, stdin=b"secret", env=env)
        assert res.returncode == 3
        assert res.stdout == b""  # nothing was delivered, in either direction
        err = res.stderr.decode()
        assert "WARNING: THE SERVER KEY OF 127.0.0.1:" in err and "HAS CHANGED" in err
        assert impostor.public in err and "line 1" in err
        assert key.public in err  # what the server offers now, to compare out of band
        assert store.path.read_text() == f"127.0.0.1:{srv.first['port']} {impostor.public}\n"

        # --server-key overrides known_hosts (which is neither used nor changed)
        res = roamlink("connect", srv.addr, "--server-key", key.public, stdin=b"ok", env=env)
        assert res.returncode == 0, res.stderr.decode()
        assert res.stdout == b"ok"
        assert store.path.read_text() == f"127.0.0.1:{srv.first['port']} {impostor.public}\n"


def test_wrong_or_malformed_server_key(tmp_path: Path) -> None:
    env = _cfg_env(tmp_path / "client")
    with server("serve", "127.0.0.1:0", "--echo", env=_cfg_env(tmp_path / "server")) as srv:
        wrong = KeyPair.generate().public
        res = roamlink("connect", srv.addr, "--server-key", wrong, stdin=b"x", env=env)
        assert res.returncode == 3 and res.stdout == b""
        assert "SERVER KEY MISMATCH" in res.stderr.decode() and wrong in res.stderr.decode()
        res = roamlink("connect", srv.addr, "--server-key", "not-a-key", stdin=b"x", env=env)
        assert res.returncode == 2 and b"--server-key" in res.stderr
        assert b"not-a-key" not in res.stderr  # never echo what may be a private key
    assert not (tmp_path / "client" / "known_hosts").exists()


def test_send_and_perf_client_pin_the_server_key(tmp_path: Path) -> None:
    key_file = tmp_path / "server.key"
    key = KeyPair.generate()
    key.save(key_file)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    payload = tmp_path / "f.bin"
    payload.write_bytes(os.urandom(100_000))
    env = _cfg_env(tmp_path / "client")
    with server("serve", "127.0.0.1:0", "--save", str(inbox), "--key", str(key_file),
                env=_cfg_env(tmp_path / "server")) as srv:
        assert srv.first["public_key"] == key.public
        assert not (tmp_path / "server").exists()  # --key: no default key made
        res = roamlink("--json", "send", str(payload), srv.addr, "--server-key", key.public,
                       env=env)
        assert res.returncode == 0, res.stderr.decode()
        assert json_lines(res.stdout)[-1]["event"] == "verified"
        res = roamlink("send", str(payload), srv.addr, "--name", "g.bin", "--server-key",
                       KeyPair.generate().public, env=env)
        assert res.returncode == 3 and b"SERVER KEY MISMATCH" in res.stderr
        assert not (inbox / "g.bin").exists()
        # TOFU through send: the learned key is a JSON report
        res = roamlink("--json", "send", str(payload), srv.addr, "--name", "h.bin", env=env)
        assert res.returncode == 0, res.stderr.decode()
        learned = [r for r in json_lines(res.stdout) if r["event"] == "server_key_learned"]
        assert learned and learned[0]["public_key"] == key.public
    with server("perf", "server", "127.0.0.1:0", "--key", str(key_file),
                env=_cfg_env(tmp_path / "server")) as srv:
        assert srv.first["public_key"] == key.public
        res = roamlink("--json", "perf", "client", srv.addr, "--seconds", "0.3",
                       "--server-key", key.public, env=env)
        assert res.returncode == 0, res.stderr.decode()
        res = roamlink("perf", "client", srv.addr, "--seconds", "0.3",
                       "--server-key", KeyPair.generate().public, env=env)
        assert res.returncode == 3 and b"SERVER KEY MISMATCH" in res.stderr


@posix_only
def test_serve_refuses_a_world_readable_or_missing_key(tmp_path: Path) -> None:
    key_file = tmp_path / "server.key"
    KeyPair.generate().save(key_file)
    os.chmod(key_file, 0o644)
    env = _cfg_env(tmp_path / "cfg")
    res = roamlink("serve", "127.0.0.1:0", "--key", str(key_file), env=env)
    assert res.returncode == 1
    assert "UNPROTECTED PRIVATE KEY FILE" in res.stderr.decode()
    assert key_file.read_text().strip() not in res.stderr.decode()
    res = roamlink("serve", "127.0.0.1:0", "--key", str(tmp_path / "typo.key"), env=env)
    assert res.returncode == 1 and b"no such key file" in res.stderr
    assert not (tmp_path / "typo.key").exists()  # an explicit path is never created
    # the default key too: created 0600, refused once others can read it
    (tmp_path / "cfg").mkdir(mode=0o700)
    KeyPair.generate().save(tmp_path / "cfg" / "server.key")
    os.chmod(tmp_path / "cfg" / "server.key", 0o640)
    res = roamlink("serve", "127.0.0.1:0", env=env)
    assert res.returncode == 1 and b"UNPROTECTED" in res.stderr


def test_listening_report_carries_the_public_key(tmp_path: Path) -> None:
    with server("serve", "127.0.0.1:0", "--sink", env=_cfg_env(tmp_path)) as srv:
        key = KeyPair.load(tmp_path / "server.key")
        assert srv.first["public_key"] == key.public
        _, out, _ = srv.stop()
    first = json.loads(out.decode().splitlines()[0]) if out else srv.first
    assert first["event"] == "listening"


def test_authorized_keys_admit_only_listed_clients(tmp_path: Path) -> None:
    admitted, other = tmp_path / "admitted.key", tmp_path / "other.key"
    KeyPair.generate().save(admitted)
    KeyPair.generate().save(other)
    listed = tmp_path / "authorized"
    listed.write_text(f"# who may connect\n{KeyPair.load(admitted).public} laptop\n")
    env = _cfg_env(tmp_path / "client")
    with server("serve", "127.0.0.1:0", "--echo", "--authorized-keys", str(listed),
                env=_cfg_env(tmp_path / "server")) as srv:
        res = roamlink("connect", srv.addr, "--key", str(admitted), stdin=b"in", env=env)
        assert res.returncode == 0, res.stderr.decode()
        assert res.stdout == b"in"
        for extra in (("--key", str(other)), ()):
            res = roamlink("connect", srv.addr, *extra, stdin=b"out", env=env)
            assert res.returncode == 3 and res.stdout == b""
            assert b"authoris" in res.stderr  # "does not authorise this client's key"
    listed.write_text("# nobody\n")
    res = roamlink("serve", "127.0.0.1:0", "--authorized-keys", str(listed), env=env)
    assert res.returncode == 2 and b"no keys" in res.stderr
