"""roamlink.tools.relay: parsers, the pure impairment model, and a few real loopback checks."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roamlink.tools.relay import (
    Impairment,
    ImpairmentModel,
    Relay,
    parse_duration,
    parse_percent,
    parse_rate,
    start_relay,
)

from .conftest import run

RECV_TIMEOUT = 5.0


# ------------------------------------------------------------------------------ parsers
@pytest.mark.parametrize(
    ("text", "expected"),
    [("20ms", 0.02), ("1.5s", 1.5), ("250us", 250e-6), ("0", 0.0), (" 3 ms ", 0.003),
     ("2MS", 0.002), ("100ns", 1e-7), ("1min", 60.0)],
)
def test_parse_duration_good(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["20", "", "ms", "abc", "20xs", "-5ms", "1.2.3s", "5 m s"])
def test_parse_duration_bad(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1%", 0.01), ("0.01", 0.01), ("100%", 1.0), ("0", 0.0), ("0.1%", 0.001), ("1", 1.0)],
)
def test_parse_percent_good(text: str, expected: float) -> None:
    assert parse_percent(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["150%", "5", "x%", "-1%", "", "1%%"])
def test_parse_percent_bad(text: str) -> None:
    with pytest.raises(ValueError, match="probability"):
        parse_percent(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50mbit", 50e6), ("10Mbit/s", 10e6), ("1gbit", 1e9), ("800kbit", 800e3),
     ("1.5Gbit/s", 1.5e9), ("100bit", 100.0), ("1mbps", 8e6), ("1kibit", 1024.0)],
)
def test_parse_rate_good(text: str, expected: float) -> None:
    assert parse_rate(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["50", "50mb", "fast", "0mbit", "", "10xbit", "-1mbit"])
def test_parse_rate_bad(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"delay": -1.0}, "delay"), ({"jitter": float("nan")}, "jitter"), ({"loss": 1.5}, "loss"),
     ({"reorder": -0.1}, "reorder"), ({"duplicate": 2.0}, "duplicate"), ({"rate": 0.0}, "rate"),
     ({"rate": float("inf")}, "rate"), ({"queue_packets": 0}, "queue_packets"),
     ({"queue_packets": 1.5}, "queue_packets"), ({"seed": "x"}, "seed"),
     ({"reorder_gap": -1.0}, "reorder_gap")],
)
def test_impairment_validation_names_field(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Impairment(**kwargs)  # type: ignore[arg-type]


def test_impairment_is_frozen() -> None:
    imp = Impairment(delay=0.01)
    with pytest.raises(AttributeError):
        imp.delay = 0.02  # type: ignore[misc]


# --------------------------------------------------------------------------------- model
def test_model_identity_passes_unchanged() -> None:
    model = ImpairmentModel(Impairment(), random.Random(0))
    assert [model.decide(t * 0.001, 100) for t in range(100)] == [[t * 0.001] for t in range(100)]


def test_model_delay_is_added() -> None:
    model = ImpairmentModel(Impairment(delay=0.02), random.Random(0))
    assert model.decide(1.0, 100) == [pytest.approx(1.02)]


def test_model_jitter_stays_in_band_and_never_before_now() -> None:
    model = ImpairmentModel(Impairment(delay=0.01, jitter=0.004), random.Random(3))
    times = [model.decide(5.0, 100)[0] - 5.0 for _ in range(5000)]
    assert min(times) >= 0.006 - 1e-12 and max(times) <= 0.014 + 1e-12
    assert max(times) - min(times) > 0.006  # it actually varies
    model = ImpairmentModel(Impairment(delay=0.001, jitter=0.01), random.Random(3))
    assert all(model.decide(5.0, 100)[0] >= 5.0 for _ in range(2000))


def test_model_fifo_jitter_varies_the_delay_but_keeps_the_order() -> None:
    """--jitter-mode fifo: the delay still varies over the whole band, yet no datagram ever
    leaves before one that arrived ahead of it; the default mode reorders."""
    fifo = ImpairmentModel(Impairment(delay=0.01, jitter=0.005, jitter_mode="fifo"),
                           random.Random(3))
    sends = [i * 0.002 for i in range(3000)]  # one datagram every 2 ms
    times = [fifo.decide(t, 1200)[0] for t in sends]
    assert times == sorted(times)
    delays = [r - t for r, t in zip(times, sends, strict=True)]
    assert min(delays) >= 0.005 - 1e-12 and max(delays) <= 0.015 + 1e-12
    assert max(delays) - min(delays) > 0.006
    free = ImpairmentModel(Impairment(delay=0.01, jitter=0.005), random.Random(3))
    times = [free.decide(t, 1200)[0] for t in sends]
    assert times != sorted(times)
    with pytest.raises(ValueError, match="jitter_mode"):
        Impairment(jitter_mode="random")


def test_model_loss_fraction_and_determinism() -> None:
    imp = Impairment(loss=0.1, seed=42)
    model = ImpairmentModel(imp)
    decisions = [model.decide(i * 1e-4, 1200) for i in range(20_000)]
    dropped = sum(1 for d in decisions if not d)
    # sigma = sqrt(0.1*0.9/20000) ~ 0.0021; allow ~7 sigma.
    assert 0.085 < dropped / 20_000 < 0.115
    assert model.dropped_loss == dropped
    again = ImpairmentModel(imp)
    assert [again.decide(i * 1e-4, 1200) for i in range(20_000)] == decisions
    other = ImpairmentModel(Impairment(loss=0.1, seed=43))
    assert [other.decide(i * 1e-4, 1200) for i in range(20_000)] != decisions


def test_model_duplicates() -> None:
    model = ImpairmentModel(Impairment(duplicate=0.2, delay=0.005), random.Random(7))
    decisions = [model.decide(float(i), 100) for i in range(10_000)]
    doubles = [d for d in decisions if len(d) == 2]
    assert all(len(d) in (1, 2) for d in decisions)
    assert 1500 < len(doubles) < 2500
    assert model.duplicated == len(doubles)
    assert all(d[0] == d[1] for d in doubles)  # no jitter: both copies leave together


def test_model_reorder_lets_later_datagrams_overtake() -> None:
    imp = Impairment(delay=0.01, reorder=0.1, reorder_gap=0.005)
    model = ImpairmentModel(imp, random.Random(11))
    sends = [i * 0.001 for i in range(2000)]
    releases = [model.decide(t, 100)[0] for t in sends]
    arrival_order = sorted(range(len(releases)), key=lambda i: (releases[i], i))
    inversions = sum(1 for a, b in zip(arrival_order, arrival_order[1:], strict=False) if a > b)
    assert model.reordered > 100
    assert inversions > 100
    # Non-reordered datagrams keep their relative order and their exact delay.
    held = [r - t for r, t in zip(releases, sends, strict=True)]
    assert all(h == pytest.approx(0.01) or h == pytest.approx(0.015) for h in held)
    assert sum(1 for h in held if h == pytest.approx(0.015)) == model.reordered


def test_model_rate_spacing() -> None:
    # 1 Mbit/s, 1250-byte datagrams: 10 ms each on the wire.
    model = ImpairmentModel(Impairment(rate=1e6, queue_packets=100), random.Random(0))
    releases = [model.decide(0.0, 1250)[0] for _ in range(10)]
    assert releases == pytest.approx([0.01 * (i + 1) for i in range(10)])
    # An idle link does not bank credit: after a long pause the next datagram takes 10 ms again.
    assert model.decide(5.0, 1250) == [pytest.approx(5.01)]
    assert model.decide(5.0, 1250) == [pytest.approx(5.02)]


def test_model_rate_queue_overflow_drops_then_recovers() -> None:
    model = ImpairmentModel(Impairment(rate=1e6, queue_packets=5), random.Random(0))
    results = [model.decide(0.0, 1250) for _ in range(8)]
    assert [len(r) for r in results] == [1, 1, 1, 1, 1, 0, 0, 0]
    assert model.dropped_queue == 3
    # At t=0.025 two datagrams have left (0.01, 0.02): room for two more, not three.
    assert [len(model.decide(0.025, 1250)) for _ in range(3)] == [1, 1, 0]
    assert model.dropped_queue == 4


def test_model_rate_plus_delay() -> None:
    model = ImpairmentModel(Impairment(rate=8e6, delay=0.02), random.Random(0))
    # 1000 bytes at 8 Mbit/s = 1 ms serialization, then 20 ms propagation.
    assert model.decide(1.0, 1000) == [pytest.approx(1.021)]
    assert model.decide(1.0, 1000) == [pytest.approx(1.022)]


@settings(max_examples=60, deadline=None)
@given(
    delay=st.floats(0, 0.1), jitter=st.floats(0, 0.05), loss=st.floats(0, 1),
    reorder=st.floats(0, 1), duplicate=st.floats(0, 1),
    rate=st.none() | st.floats(1e4, 1e9), queue=st.integers(1, 50), seed=st.integers(0, 2**32),
    gaps=st.lists(st.floats(0, 0.01), min_size=1, max_size=200),
)
def test_model_invariants(delay: float, jitter: float, loss: float, reorder: float,
                          duplicate: float, rate: float | None, queue: int, seed: int,
                          gaps: list[float]) -> None:
    imp = Impairment(delay=delay, jitter=jitter, loss=loss, reorder=reorder,
                     duplicate=duplicate, rate=rate, queue_packets=queue, seed=seed)
    model = ImpairmentModel(imp)
    now = 0.0
    outcomes = {0: 0, 1: 0, 2: 0}
    for gap in gaps:
        now += gap
        times = model.decide(now, 1200)
        outcomes[len(times)] += 1
        assert all(t >= now for t in times)  # nothing leaves before it arrived
        max_extra = delay + jitter + imp.reorder_gap
        if rate is not None:
            max_extra += queue * 1200 * 8 / rate
        assert all(t <= now + max_extra + 1e-9 for t in times)
    assert outcomes[0] == model.dropped_loss + model.dropped_queue
    assert outcomes[2] == model.duplicated
    assert model.reordered <= outcomes[1] + outcomes[2]


# ------------------------------------------------------------------------------ loopback
def _udp(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # tests read in bursts
    s.bind((host, 0))
    return s


async def _recv(sock: socket.socket) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), RECV_TIMEOUT)
    return data, (addr[0], addr[1])


def _drain(sock: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    out = []
    while True:
        try:
            data, addr = sock.recvfrom(65535)
        except BlockingIOError:
            return out
        out.append((data, (addr[0], addr[1])))


async def _wait_for(cond: object, timeout: float = RECV_TIMEOUT) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1",
     pytest.param("::1", marks=pytest.mark.skipif(not _has_ipv6_loopback(),
                                                 reason="no IPv6 loopback here"))],
)
def test_forwarding_both_ways(host: str) -> None:
    async def main() -> None:
        server, client = _udp(host), _udp(host)
        with server, client:
            async with await start_relay((host, 0), server.getsockname()[:2]) as relay:
                assert relay.local_addr[1] != 0
                for i in range(20):
                    client.sendto(b"ping%d" % i, relay.local_addr)
                    data, src = await _recv(server)
                    assert data == b"ping%d" % i
                    server.sendto(b"pong%d" % i, src)
                    data, frm = await _recv(client)
                    assert data == b"pong%d" % i
                    assert frm[1] == relay.local_addr[1]  # replies come from the listen socket
                c = relay.counters()
                assert (c.up_received, c.up_forwarded, c.down_received, c.down_forwarded) == (
                    20, 20, 20, 20)
                assert c.mappings == 1
            assert relay.closed

    run(main(), timeout=15)


def test_delay_is_a_lower_bound_both_ways() -> None:
    delay = 0.05

    async def main() -> None:
        server, client = _udp(), _udp()
        with server, client:
            relay = await start_relay(("127.0.0.1", 0), server.getsockname(),
                                      Impairment(delay=delay))
            try:
                for _ in range(10):
                    client.sendto(struct.pack("!d", time.monotonic()), relay.local_addr)
                    data, src = await _recv(server)
                    (sent,) = struct.unpack("!d", data)
                    assert time.monotonic() - sent >= delay
                    server.sendto(struct.pack("!d", time.monotonic()), src)
                    data, _ = await _recv(client)
                    (sent,) = struct.unpack("!d", data)
                    assert time.monotonic() - sent >= delay
            finally:
                relay.close()
                await relay.wait_closed()

    run(main(), timeout=15)


def test_rebind_changes_source_port_and_drops_old_mapping_replies() -> None:
    async def main() -> None:
        server, client = _udp(), _udp()
        with server, client:
            async with await start_relay(("127.0.0.1", 0), server.getsockname()) as relay:
                client.sendto(b"a", relay.local_addr)
                data, old_src = await _recv(server)
                assert data == b"a"
                assert relay.mapping_ports() == {client.getsockname(): old_src[1]}
                server.sendto(b"reply-a", old_src)
                assert (await _recv(client))[0] == b"reply-a"

                relay.rebind()
                assert relay.counters().rebinds == 1
                # A late reply to the forgotten mapping must not reach the client ...
                server.sendto(b"stale", old_src)
                client.sendto(b"b", relay.local_addr)
                data, new_src = await _recv(server)
                assert data == b"b"
                assert new_src[1] != old_src[1]
                assert relay.mapping_ports() == {client.getsockname(): new_src[1]}
                server.sendto(b"reply-b", new_src)
                # ... so the first thing the client gets after the rebind is the new reply.
                assert (await _recv(client))[0] == b"reply-b"
                assert _drain(client) == []
                c = relay.counters()
                assert c.mappings == 1
                assert c.down_forwarded == 2 and c.up_forwarded == 2

    run(main(), timeout=15)


def test_periodic_rebind() -> None:
    async def main() -> None:
        server, client = _udp(), _udp()
        with server, client:
            async with await start_relay(("127.0.0.1", 0), server.getsockname(),
                                         rebind_every=0.05) as relay:
                client.sendto(b"x", relay.local_addr)
                _, first = await _recv(server)
                await _wait_for(lambda: relay.counters().rebinds >= 2)
                client.sendto(b"y", relay.local_addr)
                data, later = await _recv(server)
                assert data == b"y" and later[1] != first[1]

    run(main(), timeout=15)


def test_two_clients_get_two_mappings() -> None:
    async def main() -> None:
        server, c1, c2 = _udp(), _udp(), _udp()
        with server, c1, c2:
            async with await start_relay(("127.0.0.1", 0), server.getsockname()) as relay:
                c1.sendto(b"one", relay.local_addr)
                d1, s1 = await _recv(server)
                c2.sendto(b"two", relay.local_addr)
                d2, s2 = await _recv(server)
                assert (d1, d2) == (b"one", b"two")
                assert s1 != s2
                assert relay.counters().mappings == 2
                server.sendto(b"for-two", s2)
                server.sendto(b"for-one", s1)
                assert (await _recv(c2))[0] == b"for-two"
                assert (await _recv(c1))[0] == b"for-one"
                # Same client again reuses its mapping.
                c1.sendto(b"again", relay.local_addr)
                assert await _recv(server) == (b"again", s1)
                assert relay.counters().mappings == 2

    run(main(), timeout=15)


def test_counters_match_with_loss_and_duplication() -> None:
    n = 200

    async def main() -> None:
        server, client = _udp(), _udp()
        with server, client:
            imp = Impairment(loss=0.3, duplicate=0.2, seed=5)
            relay: Relay = await start_relay(("127.0.0.1", 0), server.getsockname(), imp)
            async with relay:
                for i in range(n):
                    client.sendto(b"%04d" % i + b"x" * 96, relay.local_addr)
                    if i % 50 == 49:
                        await asyncio.sleep(0)  # let the relay keep up on a slow machine
                await _wait_for(lambda: relay.counters().up_received == n)
                # Without delay the relay forwards synchronously, so everything is queued now.
                await asyncio.sleep(0.05)
                got = _drain(server)
                c = relay.counters()
                assert c.up_received_bytes == 100 * n
                assert c.dropped_loss > 0 and c.duplicated > 0
                assert c.up_forwarded == n - c.dropped_loss + c.duplicated
                assert c.up_forwarded_bytes == 100 * c.up_forwarded
                assert len(got) == c.up_forwarded
                assert c.dropped_send == 0 and c.dropped_queue == 0
                # Replies are impaired too (same Impairment by default, own RNG stream).
                src = got[0][1]
                for _ in range(n):
                    server.sendto(b"r" * 10, src)
                await _wait_for(lambda: relay.counters().down_received == n)
                await asyncio.sleep(0.05)
                back = _drain(client)
                c = relay.counters()
                assert len(back) == c.down_forwarded
                assert c.down_forwarded_bytes == 10 * c.down_forwarded
                assert c.down_received_bytes == 10 * n

    run(main(), timeout=15)


def test_reverse_impairment_is_separate() -> None:
    async def main() -> None:
        server, client = _udp(), _udp()
        with server, client:
            async with await start_relay(
                ("127.0.0.1", 0), server.getsockname(), Impairment(),
                reverse=Impairment(loss=1.0),
            ) as relay:
                client.sendto(b"q", relay.local_addr)
                _, src = await _recv(server)
                for _ in range(5):
                    server.sendto(b"lost", src)
                await _wait_for(lambda: relay.counters().down_received == 5)
                client.sendto(b"q2", relay.local_addr)
                assert (await _recv(server))[0] == b"q2"
                assert _drain(client) == []
                assert relay.counters().dropped_loss == 5

    run(main(), timeout=15)


def test_close_is_idempotent_and_frees_the_port() -> None:
    async def main() -> None:
        server = _udp()
        with server:
            relay = await start_relay(("127.0.0.1", 0), server.getsockname(),
                                      Impairment(delay=1.0), rebind_every=10.0)
            addr = relay.local_addr
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.sendto(b"pending", addr)
                await _wait_for(lambda: relay.counters().up_received == 1)
            relay.close()
            relay.close()
            await asyncio.wait_for(relay.wait_closed(), RECV_TIMEOUT)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(addr)  # the listening port is free again

    run(main(), timeout=15)


def test_start_relay_rejects_bad_rebind_every() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="rebind_every"):
            await start_relay(("127.0.0.1", 0), ("127.0.0.1", 9), rebind_every=0.0)

    run(main(), timeout=15)
