"""Test support: real programs nobody here wrote (OpenSSH, curl) to carry over roamlink.

As root on Debian (CI), missing programs are installed from Debian's packages, as the netns
support installs iproute2; elsewhere :func:`require_programs` skips the test and says why.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: program -> Debian package that provides it
PACKAGES = {
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "sshd": "openssh-server",
    "curl": "curl",
}
SSHD = "/usr/sbin/sshd"


def _which(program: str) -> str | None:
    if program == "sshd":
        return SSHD if os.access(SSHD, os.X_OK) else None
    return shutil.which(program)


@functools.cache
def _install(packages: tuple[str, ...]) -> str | None:
    """apt-get install (once per set); an error text or None."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env,
                                  stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(argv[:2])}: {exc}"
        if proc.returncode != 0:
            return f"{' '.join(argv[:2])} failed: {proc.stderr.strip()[-300:]}"
    return None


def require_programs(*programs: str) -> None:
    """Skip the test (with the reason) unless every program is there or could be installed."""
    missing = [p for p in programs if _which(p) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{', '.join(missing)} not installed (as root on Debian the test installs "
                    f"{', '.join(sorted({PACKAGES[p] for p in missing}))} itself)")
    error = _install(tuple(sorted({PACKAGES[p] for p in missing})))
    still = [p for p in programs if _which(p) is None]
    if still:
        pytest.skip(f"{', '.join(still)} missing and could not be installed: {error}")


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256 (hex)."""
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 1024 * 1024))
            fh.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def sshd_config(directory: Path, listen: str = "127.0.0.1", port: int = 22) -> tuple[Path, Path]:
    """A private sshd configuration in ``directory`` that lets root in with a fresh key and
    nothing else; returns (config file, client private key)."""
    require_programs("ssh", "ssh-keygen", "sshd")
    key = directory / "client_key"
    host_key = directory / "host_key"
    for path in (key, host_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                       check=True, capture_output=True, timeout=30)
    config = directory / "sshd_config"
    config.write_text(
        f"ListenAddress {listen}\nPort {port}\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {key}.pub\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"PidFile {directory}/sshd.pid\nStrictModes no\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    return config, key


def ssh_options(key: Path) -> list[str]:
    """Client options for a throw-away server: no user config, no prompts, no known_hosts."""
    return ["-F", "/dev/null", "-i", str(key), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR"]
