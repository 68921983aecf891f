"""Tools built beside the transport, not part of it: the UDP impairment relay (``relay.py``).

The relay knows nothing of roamlink's protocol; ``roamlink relay`` (``cli/relay_cmd.py``), the
tests and the benchmarks use it to add delay, loss, rate limits and NAT re-mappings on loopback.
"""
