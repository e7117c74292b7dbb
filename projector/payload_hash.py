"""Canonical payload hashing (KHALA-004, doctrine in docs/protocol/HASHING.md).

JSON payloads are canonicalised with RFC 8785 (JSON Canonicalization Scheme) and hashed with
SHA-256 over the canonical UTF-8 bytes. Forms: raw 32 bytes in the database, base64 on the wire,
``sha256:<hex>`` in text (logs, fixtures, docs). Values JCS cannot represent exactly (NaN,
Infinity, integers beyond ±(2**53 - 1)) are refused with ``PayloadHashError``: send them as strings.
So are floats in [2**53, 1e21): JCS writes them as plain digits, which every reader parses back as
an integer beyond ±(2**53 - 1), so the canonical text could not be hashed again.
"""

import base64
import hashlib
import re

import rfc8785

_SAFE_INT = 2**53 - 1
# A JCS number of 16+ digits without a fraction or exponent; only then can an integral float at or
# above 2**53 be in the output, so the slower walk below runs only when this matches.
_LONG_DIGITS = re.compile(rb"\d{16}")


class PayloadHashError(ValueError):
    """The payload cannot be canonicalised. ``code`` is stable: ``non_finite_number``,
    ``unsafe_integer``, ``invalid_unicode`` (lone surrogate) or ``not_json`` (non-JSON type)."""

    def __init__(self, message: str, code: str = "not_json"):
        super().__init__(message)
        self.code = code


def _unsafe_float(payload) -> float | None:
    """The first float in [2**53, 1e21) (by magnitude) inside ``payload``, if any."""
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
    """The RFC 8785 canonical UTF-8 bytes of ``payload``."""
    try:
        canonical = rfc8785.dumps(payload)
    except rfc8785.FloatDomainError as exc:
        raise PayloadHashError(
            f"payload contains a non-finite number ({exc}); JSON has no NaN/Infinity", "non_finite_number"
        ) from exc
    except rfc8785.IntegerDomainError as exc:
        raise PayloadHashError(
            f"payload contains an integer outside ±(2**53-1) ({exc}); send it as a string", "unsafe_integer"
        ) from exc
    except rfc8785.CanonicalizationError as exc:
        code = "invalid_unicode" if "UTF-8" in str(exc) else "not_json"
        raise PayloadHashError(f"payload is not canonicalisable JSON: {exc}", code) from exc
    except UnicodeError as exc:  # rfc8785 encodes keys to UTF-16 for sorting: a lone surrogate key
        raise PayloadHashError(
            f"payload has an object key that is not valid Unicode (lone surrogate): {exc}", "invalid_unicode"
        ) from exc
    if _LONG_DIGITS.search(canonical) and (number := _unsafe_float(payload)) is not None:
        raise PayloadHashError(
            f"payload contains the float {number!r}, which JSON writes as an integer outside ±(2**53-1); "
            "send it as a string",
            "unsafe_integer",
        )
    return canonical


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
