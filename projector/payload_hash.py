"""Canonical payload hashing (KHALA-004, doctrine in docs/protocol/HASHING.md).

JSON payloads are canonicalised with RFC 8785 (JSON Canonicalization Scheme) and hashed with
SHA-256 over the canonical UTF-8 bytes. Forms: raw 32 bytes in the database, base64 on the wire,
``sha256:<hex>`` in text (logs, fixtures, docs). Values JCS cannot represent exactly (NaN,
Infinity, integers beyond ±(2**53 - 1)) are refused with ``PayloadHashError``: send them as strings.
"""

import base64
import hashlib

import rfc8785


class PayloadHashError(ValueError):
    """The payload cannot be canonicalised (non-finite float, unsafe integer, non-JSON type)."""


def canonical_json(payload) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``payload``."""
    try:
        return rfc8785.dumps(payload)
    except rfc8785.FloatDomainError as exc:
        raise PayloadHashError(f"payload contains a non-finite number ({exc}); JSON has no NaN/Infinity") from exc
    except rfc8785.IntegerDomainError as exc:
        raise PayloadHashError(
            f"payload contains an integer outside ±(2**53-1) ({exc}); send it as a string"
        ) from exc
    except rfc8785.CanonicalizationError as exc:
        raise PayloadHashError(f"payload is not canonicalisable JSON: {exc}") from exc


def hash_canonical(canonical: bytes) -> bytes:
    """SHA-256 of already-canonical bytes (raw 32 bytes)."""
    return hashlib.sha256(canonical).digest()


def payload_hash(payload) -> bytes:
    """Raw 32-byte SHA-256 of the canonical form of ``payload``."""
    return hash_canonical(canonical_json(payload))


def to_text(digest: bytes) -> str:
    """``sha256:<lowercase hex>``."""
    return "sha256:" + digest.hex()


def to_wire(digest: bytes | None) -> str | None:
    """Standard base64 (with padding), as the wire carries it."""
    return None if digest is None else base64.b64encode(bytes(digest)).decode("ascii")


def from_wire(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
