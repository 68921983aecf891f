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
        """The worker that owns a datagram, by the filter's rule; None if it names none.

        Short header: the worker byte of its CID. Long header: the last byte of the client's
        CID (see :func:`reuseport_program`). The same decision as the filter's, so hand-over
        and kernel agree.
        """
        if len(data) < 7:
            return None
        if data[0] & HEADER_FORM_MASK == SHORT_HEADER_FORM:
            off = self.datagram_offset
            return data[off] % self.workers if len(data) > off else None
        last = 6 + data[5]  # the scid length byte
        if last >= len(data) or data[last] == 0:
            return None
        last += data[last]
        return data[last] % self.workers if last < len(data) else None


# --- classic BPF ------------------------------------------------------------------------------
# Opcode parts from linux/filter.h (class | size | mode, or class | op | source).
BPF_LD, BPF_LDX, BPF_ST, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = 0x00, 0x01, 0x02, 0x04, 0x05, \
    0x06, 0x07
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_LEN = 0x00, 0x20, 0x40, 0x60, 0x80
BPF_ADD, BPF_SUB, BPF_AND, BPF_MOD = 0x00, 0x10, 0x50, 0x90
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE = 0x00, 0x10, 0x20, 0x30
BPF_K, BPF_X, BPF_A = 0x00, 0x08, 0x10
BPF_TAX, BPF_TXA = 0x00, 0x80

#: One instruction: (code, jump-if-true, jump-if-false, constant).
Instruction = tuple[int, int, int, int]
#: While assembling: jump targets as label names, resolved by :func:`_assemble`.
_Line = tuple[int, "str | int", "str | int", int]


def _assemble(lines: list[tuple[str, _Line] | _Line]) -> list[Instruction]:
    """Resolve ``(label, instruction)`` entries and jump targets given as label names."""
    labels: dict[str, int] = {}
    plain: list[_Line] = []
    for entry in lines:
        if isinstance(entry[0], str):
            labels[entry[0]] = len(plain)
            plain.append(entry[1])
        else:
            plain.append(entry)
    out: list[Instruction] = []
    for pc, (code, jt, jf, k) in enumerate(plain):
        def rel(target: str | int, pc: int = pc) -> int:
            return labels[target] - pc - 1 if isinstance(target, str) else target
        out.append((code, rel(jt), rel(jf), k))
    return out


def reuseport_program(layout: CidLayout) -> list[Instruction]:
    """The filter: every datagram to the worker that owns it, or to the kernel's hash.

    For ``SO_ATTACH_REUSEPORT_CBPF`` on a UDP socket the program sees the UDP payload from
    offset 0, and its return value indexes the group's sockets in bind order; an index past
    the group makes the kernel fall back to its 4-tuple hash.

    * Short header (``byte0 & 0xC0 == 0x40``): the worker byte of the destination CID.
    * Long header (a handshake: no CID of ours yet): the last byte of the *client's* CID (the
      source CID, random) modulo N. Steering a handshake by its content rather than by its
      address keeps a retransmitted or replayed SYN on one worker even from another address,
      so that worker's handshake state and replay cache see every copy.
    * Too short, or fields that run past the datagram: the kernel's hash. (Every load is
      bounds-checked first: an out-of-bounds load would end the program with 0, which
      here would mean "socket 0".)
    """
    off = layout.datagram_offset
    n = layout.workers
    return _assemble([
        (BPF_LD | BPF_W | BPF_LEN, 0, 0, 0),               # A = payload length
        (BPF_JMP | BPF_JGE | BPF_K, 0, "hash", 7),          # shorter than any header -> hash
        (BPF_ST, 0, 0, 0),                                  # M[0] = length
        (BPF_LD | BPF_B | BPF_ABS, 0, 0, 0),               # A = first byte
        (BPF_ALU | BPF_AND | BPF_K, 0, 0, HEADER_FORM_MASK),
        (BPF_JMP | BPF_JEQ | BPF_K, 0, "long", SHORT_HEADER_FORM),
        # short header: the worker byte of the destination CID
        (BPF_LD | BPF_MEM, 0, 0, 0),                        # A = length
        (BPF_JMP | BPF_JGT | BPF_K, 0, "hash", off),        # the worker byte is there?
        (BPF_LD | BPF_B | BPF_ABS, 0, 0, off),
        (BPF_ALU | BPF_MOD | BPF_K, 0, 0, n),
        (BPF_RET | BPF_A, 0, 0, 0),
        # long header: type 1, version 4, dcid length 1 (byte 5), dcid, scid length 1, scid
        ("long", (BPF_LD | BPF_B | BPF_ABS, 0, 0, 5)),      # A = dcid length d
        (BPF_MISC | BPF_TAX, 0, 0, 0),                      # X = d
        (BPF_LD | BPF_MEM, 0, 0, 0),
        (BPF_ALU | BPF_SUB | BPF_K, 0, 0, 7),               # A = length - 7 (length >= 7)
        (BPF_ST, 0, 0, 1),                                  # M[1] = length - 7
        (BPF_JMP | BPF_JGE | BPF_X, 0, "hash", 0),          # scid length byte (6 + d) there?
        (BPF_LD | BPF_B | BPF_IND, 0, 0, 6),                # A = scid length s
        (BPF_JMP | BPF_JEQ | BPF_K, "hash", 0, 0),          # no client CID -> hash
        (BPF_ALU | BPF_ADD | BPF_X, 0, 0, 0),               # A = d + s
        (BPF_MISC | BPF_TAX, 0, 0, 0),                      # X = d + s
        (BPF_LD | BPF_MEM, 0, 0, 1),                        # A = length - 7
        (BPF_JMP | BPF_JGE | BPF_X, 0, "hash", 0),          # last scid byte (6 + d + s) there?
        (BPF_LD | BPF_B | BPF_IND, 0, 0, 6),                # A = last byte of the client's CID
        (BPF_ALU | BPF_MOD | BPF_K, 0, 0, n),
        (BPF_RET | BPF_A, 0, 0, 0),
        ("hash", (BPF_RET | BPF_K, 0, 0, KERNEL_HASH)),     # the kernel's 4-tuple hash
    ])


def encode_program(prog: Sequence[Instruction]) -> bytes:
    """``struct sock_filter[]`` in native byte order (u16 code, u8 jt, u8 jf, u32 k)."""
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def run_program(prog: Sequence[Instruction], payload: bytes) -> int:
    """Evaluate a classic-BPF program over ``payload`` as the kernel would.

    Covers the instructions :func:`reuseport_program` uses (and a few neighbours). A load
    past the end of the packet ends the program with 0, as in the kernel.
    """
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(payload)
    mask = 0xFFFF_FFFF
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
            elif mode == BPF_MEM:
                value = mem[k]
            elif mode in (BPF_ABS, BPF_IND) and cls == BPF_LD:
                width = {BPF_W: 4, BPF_H: 2, BPF_B: 1}[size]
                at = k + (x if mode == BPF_IND else 0)
                if at + width > n:
                    return 0
                value = int.from_bytes(payload[at:at + width], "big")
            else:
                raise ValueError(f"unsupported load 0x{code:02x}")
            if cls == BPF_LD:
                a = value
            else:
                x = value
        elif cls == BPF_ST:
            mem[k] = a
        elif cls == BPF_ALU:
            op, operand = code & 0xF0, (x if code & BPF_X else k)
            if op == BPF_ADD:
                a += operand
            elif op == BPF_SUB:
                a -= operand
            elif op == BPF_AND:
                a &= operand
            elif op == BPF_MOD:
                if operand == 0:
                    return 0
                a %= operand
            else:
                raise ValueError(f"unsupported ALU op 0x{code:02x}")
            a &= mask
        elif cls == BPF_JMP:
            op, operand = code & 0xF0, (x if code & BPF_X else k)
            if op == BPF_JA:
                pc += k
                continue
            if op == BPF_JEQ:
                taken = a == operand
            elif op == BPF_JGT:
                taken = a > operand
            elif op == BPF_JGE:
                taken = a >= operand
            else:
                raise ValueError(f"unsupported jump 0x{code:02x}")
            pc += jt if taken else jf
        elif cls == BPF_RET:
            return a if code & 0x18 == BPF_A else k
        elif cls == BPF_MISC:
            if code & 0xF8 == BPF_TXA:
                a = x
            else:
                x = a
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
