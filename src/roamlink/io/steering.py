"""Steering by connection ID: which worker (and which server) a datagram belongs to.

A server that runs N worker processes on one port (``SO_REUSEPORT``) must deliver every
packet of a connection to the worker that holds its state, also after the client's address
changed: the kernel's default 4-tuple hash would send a rebound client to another worker and
the connection would die. So every CID a server issues names its worker (and, for a load
balancer in front of several machines, its server) at a fixed position, and a classic-BPF
program attached to the ``SO_REUSEPORT`` group reads that byte from each datagram.

CID layout (see docs/wire-format.md, "Server connection IDs"):

* without a server id: ``worker byte | random`` -- the worker byte is random except that its
  value modulo the worker count is the worker, so a single worker gets fully random CIDs;
* with ``Config.server_id`` (QUIC-LB plaintext style): ``first octet | server id | worker
  byte | random``; the first octet holds the configuration bits (0b000) and the CID length
  minus one, so a QUIC-LB-style balancer can parse it without knowing the length.

The filter (:func:`reuseport_program`) returns the worker for a short header and an
out-of-range index for anything else (long headers, which carry no CID of ours yet, and
datagrams too short to hold the worker byte); the kernel then falls back to its 4-tuple hash,
which keeps a client's retransmitted SYNs on one worker. :func:`run_program` evaluates such a
program in Python, with the kernel's semantics, so tests check the generator against the very
bytes handed to the kernel. The filter is an optimisation only: a worker that receives a
datagram for another worker's CID hands it over (see :mod:`roamlink.server`).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..config import Config

#: ``setsockopt`` option numbers (Linux; not all exported by the socket module).
SO_REUSEPORT = getattr(socket, "SO_REUSEPORT", 15)
SO_ATTACH_REUSEPORT_CBPF = 51

#: Bits of the first byte of a packet: long headers have 0x80 set; short headers have 0x80
#: clear and the fixed bit 0x40 set (RFC 8999 invariants; also true of version 1's 0x40).
HEADER_FORM_MASK = 0xC0
SHORT_HEADER_FORM = 0x40
#: What the filter returns for "no opinion": an index past the group, so the kernel hashes.
KERNEL_HASH = 0xFFFF_FFFF
#: Most workers a CID can name (one byte).
MAX_WORKERS = 256
#: QUIC-LB "config rotation" bits of the first octet; 0b111 would mean "unroutable".
CONFIG_ROTATION = 0


@dataclass(frozen=True)
class CidLayout:
    """Where a server-issued CID carries its server id and worker byte."""

    cid_length: int = 8
    server_id: int | None = None
    server_id_length: int = 1
    workers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be between 1 and {MAX_WORKERS}")
        if self.cid_length <= self.worker_offset:
            raise ValueError("cid_length leaves no room for the worker byte")

    @classmethod
    def from_config(cls, config: Config, workers: int = 1) -> CidLayout:
        return cls(cid_length=config.cid_length, server_id=config.server_id,
                   server_id_length=config.server_id_length, workers=workers)

    @property
    def worker_offset(self) -> int:
        """Index of the worker byte in the CID."""
        return 0 if self.server_id is None else 1 + self.server_id_length

    @property
    def datagram_offset(self) -> int:
        """Index of the worker byte in a short-header datagram (the CID starts at byte 1)."""
        return 1 + self.worker_offset

    def first_octet(self) -> int:
        return (CONFIG_ROTATION << 5) | ((self.cid_length - 1) & 0x1F)

    def generate(self, worker: int, random_bytes: Callable[[int], bytes] = os.urandom
                 ) -> bytes:
        """A fresh CID naming ``worker`` (and our server id, if any)."""
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} outside 0..{self.workers - 1}")
        cid = bytearray(random_bytes(self.cid_length))
        off = self.worker_offset
        if self.server_id is not None:
            cid[0] = self.first_octet()
            cid[1:off] = self.server_id.to_bytes(self.server_id_length, "big")
        n = self.workers
        value = cid[off] - cid[off] % n + worker  # random, but == worker modulo n
        if value >= MAX_WORKERS:
            value -= n
        cid[off] = value
        return bytes(cid)

    def generator(self, worker: int, random_bytes: Callable[[int], bytes] = os.urandom
                  ) -> Callable[[int], bytes]:
        """A ``random_bytes``-shaped CID source for the connections of ``worker``."""
        def make(n: int) -> bytes:
            if n != self.cid_length:
                raise ValueError(f"CID length {n} != layout's {self.cid_length}")
            return self.generate(worker, random_bytes)
        return make

    def worker_of(self, cid: bytes) -> int:
        return cid[self.worker_offset] % self.workers

    def server_id_of(self, cid: bytes) -> int | None:
        if self.server_id is None:
            return None
        return int.from_bytes(cid[1:self.worker_offset], "big")

    def datagram_worker(self, data: bytes) -> int | None:
        """The worker a short-header datagram is for; None for anything else.

        The same decision as the filter's, so hand-over and kernel agree.
        """
        off = self.datagram_offset
        if len(data) <= off or data[0] & HEADER_FORM_MASK != SHORT_HEADER_FORM:
            return None
        return data[off] % self.workers


# --- classic BPF ------------------------------------------------------------------------------
# Opcode parts from linux/filter.h (class | size | mode, or class | op | source).
BPF_LD, BPF_LDX, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x01, 0x04, 0x05, 0x06
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_LEN = 0x00, 0x20, 0x80
BPF_AND, BPF_MOD = 0x50, 0x90
BPF_JA, BPF_JEQ, BPF_JGE = 0x00, 0x10, 0x30
BPF_K, BPF_A = 0x00, 0x10

#: One instruction: (code, jump-if-true, jump-if-false, constant).
Instruction = tuple[int, int, int, int]


def reuseport_program(layout: CidLayout) -> list[Instruction]:
    """The filter: short header -> worker byte modulo N; anything else -> the kernel's hash.

    For ``SO_ATTACH_REUSEPORT_CBPF`` on a UDP socket the program sees the UDP payload from
    offset 0, and its return value indexes the group's sockets in the order they were bound;
    an index past the group makes the kernel fall back to its hash.
    """
    off = layout.datagram_offset
    hash_at = 8
    prog: list[Instruction] = [
        (BPF_LD | BPF_W | BPF_LEN, 0, 0, 0),            # 0: A = payload length
        (BPF_JMP | BPF_JGE | BPF_K, 0, hash_at - 2, off + 1),  # 1: too short -> hash
        (BPF_LD | BPF_B | BPF_ABS, 0, 0, 0),            # 2: A = first byte
        (BPF_ALU | BPF_AND | BPF_K, 0, 0, HEADER_FORM_MASK),  # 3: header form bits
        (BPF_JMP | BPF_JEQ | BPF_K, 0, hash_at - 5, SHORT_HEADER_FORM),  # 4: long -> hash
        (BPF_LD | BPF_B | BPF_ABS, 0, 0, off),          # 5: A = worker byte
        (BPF_ALU | BPF_MOD | BPF_K, 0, 0, layout.workers),  # 6: A %= workers
        (BPF_RET | BPF_A, 0, 0, 0),                     # 7: that socket
        (BPF_RET | BPF_K, 0, 0, KERNEL_HASH),           # 8: the kernel's 4-tuple hash
    ]
    assert len(prog) == hash_at + 1
    return prog


def encode_program(prog: Sequence[Instruction]) -> bytes:
    """``struct sock_filter[]`` in native byte order (u16 code, u8 jt, u8 jf, u32 k)."""
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def run_program(prog: Sequence[Instruction], payload: bytes) -> int:
    """Evaluate a classic-BPF program over ``payload`` as the kernel would.

    Covers the instructions :func:`reuseport_program` may use (and a few neighbours). A load
    past the end of the packet ends the program with 0, as in the kernel.
    """
    a = x = 0
    pc = 0
    n = len(payload)
    while True:
        if pc >= len(prog):
            raise ValueError("program runs off its end")
        code, jt, jf, k = prog[pc]
        cls = code & 0x07
        pc += 1
        if cls in (BPF_LD, BPF_LDX):
            mode, size = code & 0xE0, code & 0x18
            if mode == BPF_LEN:
                value = n
            elif mode == BPF_IMM:
                value = k
            elif mode == BPF_ABS:
                width = {BPF_W: 4, BPF_H: 2, BPF_B: 1}[size]
                if k + width > n:
                    return 0
                value = int.from_bytes(payload[k:k + width], "big")
            else:
                raise ValueError(f"unsupported load 0x{code:02x}")
            if cls == BPF_LD:
                a = value
            else:
                x = value
        elif cls == BPF_ALU:
            op, operand = code & 0xF0, (x if code & 0x08 else k)
            if op == BPF_AND:
                a &= operand
            elif op == BPF_MOD:
                if operand == 0:
                    return 0
                a %= operand
            else:
                raise ValueError(f"unsupported ALU op 0x{code:02x}")
            a &= 0xFFFF_FFFF
        elif cls == BPF_JMP:
            op, operand = code & 0xF0, (x if code & 0x08 else k)
            if op == BPF_JA:
                pc += k
                continue
            if op == BPF_JEQ:
                taken = a == operand
            elif op == BPF_JGE:
                taken = a >= operand
            else:
                raise ValueError(f"unsupported jump 0x{code:02x}")
            pc += jt if taken else jf
        elif cls == BPF_RET:
            return a if code & 0x18 == BPF_A else k
        else:
            raise ValueError(f"unsupported instruction 0x{code:02x}")


def select_socket(prog: Sequence[Instruction], payload: bytes, group_size: int,
                  kernel_hash: int) -> int:
    """The group index the kernel picks: the program's answer, else ``kernel_hash``."""
    index = run_program(prog, payload)
    return index if index < group_size else kernel_hash % group_size


def attach_reuseport_filter(sock: socket.socket, prog: Sequence[Instruction]) -> None:
    """Attach ``prog`` to ``sock``'s ``SO_REUSEPORT`` group (once for the whole group).

    Raises OSError where the platform or a seccomp profile refuses it.
    """
    code = encode_program(prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(prog), ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
