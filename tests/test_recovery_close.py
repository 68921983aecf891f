"""Loss around the end of a stream: the four-way close must finish promptly on both sides."""

from __future__ import annotations

import pytest

from roamlink.core.buffers import SendBuffer
from roamlink.testing.bulk import open_flow
from roamlink.testing.simnet import LinkConfig, SimNetwork


def test_range_acknowledged_twice_never_moves_the_send_base_back() -> None:
    """A range resent by a probe and by loss detection is acknowledged in two packets; the
    second acknowledgement used to pull the release point back, so the stream never
    counted as fully acknowledged and the close hung until the idle timeout."""
    buf = SendBuffer()
    buf.write(b"a" * 3000)
    buf.write_eof()
    while buf.next_range(1000, 10**9) is not None:
        pass
    buf.on_acked(2000, 1000, True)
    buf.on_acked(0, 1000, False)
    buf.on_acked(1000, 1000, False)
    assert buf.base == 3000 and buf.all_acked
    buf.on_acked(1000, 1000, False)  # the duplicate
    assert buf.base == 3000 and buf.all_acked


@pytest.mark.parametrize("seed", range(12))
def test_close_under_heavy_loss_completes_on_both_sides(seed: int) -> None:
    net = SimNetwork(seed=seed, default_link=LinkConfig(delay=0.01, loss=0.15))
    server = net.add_node(("10.0.0.1", 4433), listen=True)
    client = net.add_node(("10.0.0.2", 5000))
    flow = open_flow(net, client, server)
    c, s = flow.sender, flow.receiver
    c.send(b"x" * 20000)
    c.send_eof()
    net.flush(client)
    assert net.run_until(lambda: s.recv_buf.fin_offset == s.recv_buf.delivered == 20000, 30)
    assert s.read() == b"x" * 20000
    s.send(b"ok")
    s.send_eof()
    net.flush(server)
    start = net.now
    # the side whose FIN-ACK is lost must get it again while the other side drains
    assert net.run_until(lambda: c.is_terminated and s.is_terminated, 30)
    assert net.now - start < 5.0
    assert c.error is None and s.error is None
    assert c.read() == b"ok" and c.at_eof
