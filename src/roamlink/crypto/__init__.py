"""Packet protection and the Noise handshake (see docs/security.md and docs/wire-format.md)."""
