"""Server CPU time per handshake: mac1 check, Noise message 1 read, message 2 write, key split.

Usage: python bench/handshake_cpu.py [N]

Measures the process CPU time (``time.process_time``) the responder spends on N complete
handshakes made by in-process clients (their cost is excluded), and prints handshakes per
second on one core. The target of the encryption issue is >= 2,000/s.
"""

from __future__ import annotations

import sys
import time

from roamlink.crypto import handshake, noise
from roamlink.crypto.packet_protection import PacketProtection

HEADER = b"\xc1\x00\x00\x00\x02\x00\x08clientci"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    server = handshake.ServerCrypto(noise.generate_keypair()[0])
    payload = handshake.encode_syn_payload(time.time(), bytes(1000))
    clients = []
    for _ in range(n):
        client = handshake.ClientHandshake(noise.generate_keypair()[0], server.public_key)
        clients.append((client, client.seal_syn(HEADER, payload)))
    reply = handshake.encode_syn_ack_payload(1, b"s" * 8, bytes(16), bytes(100))
    spent = 0.0
    for _client, syn in clients:
        start = time.process_time()
        if not server.check_mac1(syn):
            raise SystemExit("mac1 failed")
        opened = server.open_syn(syn, len(HEADER), time.time())
        hs = handshake.ServerHandshake(opened)
        hs.seal_syn_ack(b"\xc2h", reply)
        send, recv = hs.traffic_keys()
        PacketProtection(send, recv)
        spent += time.process_time() - start
    print(f"{n} handshakes: {spent / n * 1e6:.0f} us CPU each on the server, "
          f"{n / spent:.0f} handshakes/s on one core")


if __name__ == "__main__":
    main()
