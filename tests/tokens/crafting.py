"""Known keys and a hand-made JWS builder, so tests can produce what a correct library refuses to."""

import base64
import hashlib
import hmac
import json

SECRET_A = "a" * 20 + "-secret-of-key-a-0123456789"
SECRET_B = "b" * 20 + "-secret-of-key-b-0123456789"
KEYS = f"kid-a:{SECRET_A},kid-b:{SECRET_B}"
NOW = 1_800_000_000


class _Drop:
    def __repr__(self):
        return "DROP"


DROP = _Drop()  # valid_claims(x=DROP) removes claim x


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(claims, *, header=None, secret=SECRET_A, alg_for_mac="sha256", signature=None) -> str:
    """Build a JWS by hand so tests can produce what a correct library refuses to (alg none …)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": "kid-a"} if header is None else header
    head = b64(json.dumps(header).encode() if not isinstance(header, bytes) else header)
    body = b64(json.dumps(claims).encode() if not isinstance(claims, bytes) else claims)
    signing_input = f"{head}.{body}".encode()
    if signature is None:
        signature = b64(hmac.new(secret.encode(), signing_input, getattr(hashlib, alg_for_mac)).digest())
    return f"{head}.{body}.{signature}"


def valid_claims(now=NOW, **changes):
    claims = {
        "iss": "khala",
        "aud": "openagents-sync",
        "sub": "user:7",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "0123456789abcdef01234567",
        "oa_user_id": 7,
        "oa_org_id": "user:7",
        "oa_sync_scopes": ["runtime.run_summaries", "runtime.notifications"],
        "oa_claims_version": "oa_sync_claims_v1",
        "oa_session_id": "sess_test",
        "oa_device_id": "device:test",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not DROP}
