"""Stateless RETRY tokens: bound to the address, the CIDs and a short lifetime; rotated."""

from __future__ import annotations

import pytest

from roamlink.io.retry_token import TOKEN_LENGTH, RetryTokens

ADDR = ("192.0.2.7", 50000)
SCID = bytes(range(8))


def test_token_opens_for_its_client_only() -> None:
    tokens = RetryTokens(lifetime=5.0, now=100.0)
    token = tokens.mint(ADDR, SCID, 100.0)
    assert len(token) == TOKEN_LENGTH
    assert tokens.check(token, ADDR, SCID, 101.0)
    assert not tokens.check(token, ("192.0.2.7", 50001), SCID, 101.0)  # another port
    assert not tokens.check(token, ("192.0.2.8", 50000), SCID, 101.0)  # another IP
    assert not tokens.check(token, ADDR, bytes(8), 101.0)  # another handshake
    assert not tokens.check(token, ADDR, SCID, 105.5)  # expired
    assert not tokens.check(token[:-1], ADDR, SCID, 101.0)
    for i in range(TOKEN_LENGTH):  # any flipped bit spoils it
        bad = bytearray(token)
        bad[i] ^= 0x01
        assert not tokens.check(bytes(bad), ADDR, SCID, 101.0)


def test_tokens_are_unique_and_ipv6_works() -> None:
    tokens = RetryTokens()
    v6 = ("2001:db8::1", 443)
    a = tokens.mint(v6, SCID, 0.0)
    b = tokens.mint(v6, SCID, 0.0)
    assert a != b  # fresh nonce every time
    assert tokens.check(a, v6, SCID, 1.0) and tokens.check(b, v6, SCID, 1.0)
    assert not tokens.check(a, ("::ffff:192.0.2.7", 443), SCID, 1.0)


def test_secret_rotation_keeps_the_previous_secret_only() -> None:
    tokens = RetryTokens(lifetime=5.0, rotate_every=10.0, now=0.0)
    old = tokens.mint(ADDR, SCID, 9.0)
    tokens.mint(ADDR, SCID, 10.0)  # rotates
    assert tokens.check(old, ADDR, SCID, 11.0)  # the previous secret still opens
    # a second rotation forgets the first secret (and the token expired long before)
    tokens.mint(ADDR, SCID, 20.5)
    assert not tokens.check(old, ADDR, SCID, 20.5)
    fresh = RetryTokens(now=0.0)  # another listener (or a restart): another secret
    assert not fresh.check(old, ADDR, SCID, 11.0)
    with pytest.raises(ValueError):
        RetryTokens(lifetime=10.0, rotate_every=5.0)
