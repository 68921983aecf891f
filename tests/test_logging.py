"""Log records of a connection carry its ID; the library never prints."""

from __future__ import annotations

import logging

import pytest

from roamlink.testing.scenarios import establish
from roamlink.testing.simnet import SimNetwork


def test_connection_log_records_carry_the_cid(caplog: pytest.LogCaptureFixture,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG, logger="roamlink")
    net = SimNetwork(seed=1)
    server = net.add_node(("10.0.0.1", 4433), listen=True)
    client = net.add_node(("10.0.0.2", 5000))
    c, s = establish(net, client, server)
    c.abort(net.now, 0x100, "bye")
    net.flush(client)
    net.run(until=net.now + 1)
    records = [r for r in caplog.records if r.name == "roamlink.connection"]
    cids = {getattr(r, "cid", None) for r in records}
    assert c.local_cid.hex() in cids and s.local_cid.hex() in cids
    assert None not in cids
    assert any("handshake complete" in r.getMessage() for r in records)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
