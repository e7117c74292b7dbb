"""Payload hashing, identical to the server's ``projector.payload_hash`` (KHALA-004).

Canonical JSON is RFC 8785 (JCS) via the ``rfc8785`` package; the hash is SHA-256 over the
canonical UTF-8 bytes. The wire carries it base64-encoded; text form is ``sha256:<hex>``.
The shared vectors in ``docs/protocol/fixtures/payload_hash_vectors.v1.json`` are checked by the
server's, this client's and the JavaScript client's test suites.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

import rfc8785


_SAFE_INT = 2**53 - 1


class PayloadHashError(ValueError):
    """The payload cannot be canonicalised; ``code`` as the server's: ``non_finite_number``,
    ``unsafe_integer``, ``invalid_unicode`` (lone surrogate) or ``not_json``."""

    def __init__(self, message: str, code: str = "not_json"):
        super().__init__(message)
        self.code = code


def _unsafe_float(payload) -> float | None:
    """A float in (2**53-1, 1e21): JCS writes it as plain digits that read back as an unsafe integer."""
    stack = [payload]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, float) and _SAFE_INT < abs(value) < 1e21:
            return value
    return None


def canonical_json(payload) -> bytes:
    """RFC 8785 bytes, refusing exactly what the server refuses (same rules, same codes)."""
    try:
        canonical = rfc8785.dumps(payload)
    except rfc8785.FloatDomainError as exc:
        raise PayloadHashError(f"non-finite number: {exc}", "non_finite_number") from exc
    except rfc8785.IntegerDomainError as exc:
        raise PayloadHashError(f"integer outside ±(2**53-1): {exc}", "unsafe_integer") from exc
    except rfc8785.CanonicalizationError as exc:
        code = "invalid_unicode" if "UTF-8" in str(exc) else "not_json"
        raise PayloadHashError(f"payload is not canonicalisable JSON: {exc}", code) from exc
    except UnicodeError as exc:  # keys are encoded to UTF-16 for sorting: a lone surrogate key
        raise PayloadHashError(f"object key is not valid Unicode: {exc}", "invalid_unicode") from exc
    if (number := _unsafe_float(payload)) is not None:
        raise PayloadHashError(f"float {number!r} is written as an integer outside ±(2**53-1)", "unsafe_integer")
    return canonical


def payload_hash(payload) -> bytes:
    """Raw 32-byte SHA-256 of the canonical form of ``payload``."""
    return hashlib.sha256(canonical_json(payload)).digest()


def to_wire(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def to_text(digest: bytes) -> str:
    return "sha256:" + digest.hex()


def from_wire(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadHashError(f"payload_hash is not base64: {exc}") from None


def verify(payload, wire_hash: str | None) -> bool:
    """True when ``wire_hash`` (base64) is the hash of ``payload``. A missing hash cannot be verified."""
    if wire_hash is None:
        return False
    try:
        return payload_hash(payload) == from_wire(wire_hash)
    except PayloadHashError:
        return False
