"""A tiny UDP peer driven over stdin/stdout, run inside network namespaces by the tests.

server PORT: prints READY, then "FROM ip port" for each datagram (and echoes it); on stdin
"sendto IP PORT" sends a datagram there. client HOST PORT: on stdin "send" sends one datagram
and prints REPLY or TIMEOUT; "recv" waits for any datagram; "blast SECONDS" sends 1200-byte
datagrams as fast as it can. sink PORT SECONDS: prints the bytes received in SECONDS.
"""

from __future__ import annotations

import select
import socket
import sys
import time


def server(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    print("READY", flush=True)
    while True:
        ready, _, _ = select.select([sock, sys.stdin], [], [], 30)
        if not ready:
            return
        if sock in ready:
            data, addr = sock.recvfrom(2048)
            print(f"FROM {addr[0]} {addr[1]}", flush=True)
            sock.sendto(data, addr)
        if sys.stdin in ready:
            line = sys.stdin.readline().split()
            if not line:
                return
            if line[0] == "sendto":
                sock.sendto(b"late", (line[1], int(line[2])))
                print("SENT", flush=True)


def client(host: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] in ("send", "recv"):
            if cmd[0] == "send":
                sock.sendto(b"hello", (host, port))
            try:
                sock.recvfrom(2048)
                print("REPLY", flush=True)
            except TimeoutError:
                print("TIMEOUT", flush=True)
        elif cmd[0] == "blast":
            end = time.monotonic() + float(cmd[1])
            payload = bytes(1200)
            sent = 0
            while time.monotonic() < end:
                try:
                    sock.sendto(payload, (host, port))
                    sent += 1
                except OSError:
                    pass
            print(f"SENT {sent}", flush=True)


def sink(port: int, seconds: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.5)
    print("READY", flush=True)
    total = 0
    first = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = sock.recv(2048)
        except TimeoutError:
            continue
        if first is None:
            first = time.monotonic()
            end = first + seconds
        total += len(data)
    print(f"BYTES {total}", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        server(int(sys.argv[2]))
    elif mode == "client":
        client(sys.argv[2], int(sys.argv[3]))
    else:
        sink(int(sys.argv[2]), float(sys.argv[3]))
