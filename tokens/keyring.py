"""The signing keyring: which keys sign and verify sync tokens, named by ``kid``.

The ring comes from the ``SIGNING_KEYS`` setting (env ``KHALA_SIGNING_KEYS``), a comma-separated
list of entries, each one of

- ``kid:secret``: an HS256 shared secret (at least 32 bytes);
- ``kid:ALG:key``: an asymmetric private key, ``ALG`` one of ``EdDSA`` (Ed25519), ``ES256`` (P-256)
  or ``RS256`` (RSA, at least 2048 bits), ``key`` its PKCS#8 DER encoding in unpadded base64url.

Each key has exactly ONE algorithm, which is its whole allow-list at verification: an RSA key never
verifies an HS256 token (the classic confusion attack, where the RSA public key is used as an HMAC
secret), and no key verifies ``none``. Only asymmetric keys are published (``/.well-known/jwks.json``,
public half only); an HS256 secret never leaves the ring.

The FIRST key is the current signer; every key in the ring verifies.
That one ordering rule is the whole rotation model (docs/sync/KEY_ROTATION.md): append a new key
(verify-only) → move it to the front (promote) → drop the old one (retire).

When ``SIGNING_KEYS`` is empty the value may come from the file named by ``SIGNING_KEYS_FILE``
(env ``KHALA_SIGNING_KEYS_FILE``; `make run` uses ``var/dev-signing-keys``). There is no other
fallback: without a key the issuers answer 503 and the verifier rejects every token.

Settings are read on every call (tests use ``override_settings``); parsing is cached by the raw
value, so a hot path pays one dict lookup.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import secrets
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from khala_project.conf import khala_setting

# HS256 keys shorter than the hash output (32 bytes) weaken HMAC (RFC 7518 §3.2 requires >= 256 bits).
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
KID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")

HMAC_ALGORITHM = "HS256"
ASYMMETRIC_ALGORITHMS = ("EdDSA", "ES256", "RS256")
# Every algorithm a key of the ring may have; the verifier's header check uses this tuple.
ALGORITHMS = (HMAC_ALGORITHM, *ASYMMETRIC_ALGORITHMS)


class KeyringMisconfigured(Exception):
    """The configured keys cannot be used; ``str(exc)`` says why without revealing any secret."""


class NoSigningKey(KeyringMisconfigured):
    """No key is configured at all (the development default)."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _private_key_problem(alg: str, key) -> str | None:
    """Why ``key`` (a loaded private key) cannot be used with ``alg``, or None."""
    if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if alg == "ES256" and isinstance(key, ec.EllipticCurvePrivateKey):
        return None if isinstance(key.curve, ec.SECP256R1) else "ES256 needs a P-256 key"
    if alg == "RS256" and isinstance(key, rsa.RSAPrivateKey):
        return None if key.key_size >= MIN_RSA_BITS else f"RS256 needs at least {MIN_RSA_BITS} bits"
    return f"the key is not a {alg} private key"


@dataclass(frozen=True)
class SigningKey:
    """One key of the ring. ``secret`` is the HMAC secret (HS256) or the PKCS#8 DER private key."""

    kid: str
    # repr=False: a key that ends up in a log line or a traceback must not leak its secret.
    secret: bytes = field(repr=False)
    alg: str = HMAC_ALGORITHM

    @property
    def asymmetric(self) -> bool:
        return self.alg != HMAC_ALGORITHM

    @functools.cached_property
    def _private_key(self):
        return serialization.load_der_private_key(self.secret, password=None)

    def signing_key(self):
        """What ``jwt.encode`` signs with: the secret, or the private key object."""
        return self._private_key if self.asymmetric else self.secret

    @functools.cached_property
    def _public_key(self):
        return self._private_key.public_key()

    def verification_key(self):
        """What the verifier checks with: the secret, or the PUBLIC key object."""
        return self._public_key if self.asymmetric else self.secret

    def public_jwk(self) -> dict | None:
        """The public JWK (RFC 7517) with ``kid``, ``alg`` and ``use``; None for an HS256 secret."""
        if not self.asymmetric:
            return None
        jwk = get_default_algorithms()[self.alg].to_jwk(self.verification_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def setting_entry(self) -> str:
        """This key's entry of the ``SIGNING_KEYS`` value (contains the secret)."""
        if self.asymmetric:
            return f"{self.kid}:{self.alg}:{_b64url(self.secret)}"
        return f"{self.kid}:{self.secret.decode()}"


@dataclass(frozen=True)
class Keyring:
    keys: tuple[SigningKey, ...]

    def current(self) -> SigningKey:
        """The key new tokens are signed with (the first one)."""
        return self.keys[0]

    def get(self, kid: str) -> SigningKey | None:
        """The key named ``kid``, or None when this ring does not know it."""
        for key in self.keys:
            if key.kid == kid:
                return key
        return None

    def kids(self) -> list[str]:
        return [key.kid for key in self.keys]

    def to_setting(self) -> str:
        """The ``SIGNING_KEYS`` value of this ring (contains the secrets)."""
        return ",".join(key.setting_entry() for key in self.keys)

    def jwks(self) -> dict:
        """The JWK Set of the ring's public keys, current signer first (HS256 keys are left out)."""
        return {"keys": [jwk for jwk in (key.public_jwk() for key in self.keys) if jwk is not None]}


def _asymmetric_key(position: int, kid: str, alg: str, encoded: str) -> SigningKey:
    try:
        der = _unb64url(encoded.strip())
        private_key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, binascii.Error):
        raise KeyringMisconfigured(
            f"signing key entry {position} ({kid!r}): the {alg} key is not base64url PKCS#8 DER"
        ) from None
    problem = _private_key_problem(alg, private_key)
    if problem:
        raise KeyringMisconfigured(f"signing key {kid!r}: {problem}")
    return SigningKey(kid=kid, secret=der, alg=alg)


@functools.lru_cache(maxsize=16)
def parse_signing_keys(raw: str) -> Keyring:
    """Parse ``kid:secret`` / ``kid:ALG:key`` entries; raise ``KeyringMisconfigured`` naming the bad one."""
    text = (raw or "").strip()
    if not text:
        raise NoSigningKey("no signing key configured (set KHALA_SIGNING_KEYS)")
    keys: list[SigningKey] = []
    seen: set[str] = set()
    for position, entry in enumerate(text.split(","), start=1):
        entry = entry.strip()
        if not entry:
            raise KeyringMisconfigured(f"signing key entry {position} is empty (stray comma?)")
        kid, sep, secret = entry.partition(":")
        kid, secret = kid.strip(), secret.strip()
        if not sep:
            raise KeyringMisconfigured(f"signing key entry {position} is not of the form kid:secret")
        if not KID_PATTERN.match(kid):
            raise KeyringMisconfigured(
                f"signing key entry {position}: kid must be 1-64 characters of [A-Za-z0-9._-]"
            )
        if kid in seen:
            raise KeyringMisconfigured(f"signing key kid {kid!r} appears twice")
        seen.add(kid)
        # An HS256 secret that happened to start with "EdDSA:" would fail to load as a key and be
        # refused loudly; it is never silently read as another kind of key.
        alg, sep, encoded = secret.partition(":")
        if sep and alg in ASYMMETRIC_ALGORITHMS:
            keys.append(_asymmetric_key(position, kid, alg, encoded))
            continue
        secret_bytes = secret.encode("utf-8")
        if len(secret_bytes) < MIN_SECRET_BYTES:
            raise KeyringMisconfigured(
                f"signing key {kid!r} is {len(secret_bytes)} bytes; HS256 needs at least {MIN_SECRET_BYTES}"
            )
        keys.append(SigningKey(kid=kid, secret=secret_bytes))
    return Keyring(keys=tuple(keys))


@functools.lru_cache(maxsize=4)
def _read_keys_file(path: str, mtime_ns: int, size: int) -> str:
    # Keyed by (path, mtime, size): an edited file is re-read, an unchanged one costs one stat().
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def configured_value() -> str:
    """The raw ``SIGNING_KEYS`` value in force (from the setting, else from ``SIGNING_KEYS_FILE``)."""
    raw = khala_setting("SIGNING_KEYS") or ""
    if raw.strip():
        return raw
    path = khala_setting("SIGNING_KEYS_FILE") or ""
    if not path:
        return ""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise NoSigningKey(f"no signing key configured: KHALA_SIGNING_KEYS_FILE {path!r} does not exist") from None
    except OSError as exc:
        raise KeyringMisconfigured(f"cannot read KHALA_SIGNING_KEYS_FILE {path!r}: {exc.strerror}") from None
    try:
        return _read_keys_file(path, stat.st_mtime_ns, stat.st_size)
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyringMisconfigured(f"cannot read KHALA_SIGNING_KEYS_FILE {path!r}: {type(exc).__name__}") from None


def load_keyring() -> Keyring:
    """The keyring in force; raise ``KeyringMisconfigured`` (or ``NoSigningKey``) when unusable."""
    return parse_signing_keys(configured_value())


# --- operations behind `manage.py sync_keys` (the tests call these too) -----------------------


def _new_private_key(alg: str):
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS)


def generate_key(
    alg: str = HMAC_ALGORITHM,
    *,
    now: float | None = None,
    token_hex=secrets.token_hex,
    token_urlsafe=secrets.token_urlsafe,
) -> SigningKey:
    """A fresh key of ``alg``: kid ``ks-<UTC date>-<6 hex>`` (the date tells operators its age).

    HS256: 48 random bytes as a 64-character secret. Asymmetric: a new private key from
    ``cryptography``'s generator (the OS CSPRNG), stored as PKCS#8 DER.
    """
    if alg not in ALGORITHMS:
        raise KeyringMisconfigured(f"unknown algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")
    stamp = time.strftime("%Y%m%d", time.gmtime(time.time() if now is None else now))
    kid = f"ks-{stamp}-{token_hex(3)}"
    if alg == HMAC_ALGORITHM:
        # token_urlsafe's alphabet has no ':' or ',', so the secret never breaks the setting's syntax.
        return SigningKey(kid=kid, secret=token_urlsafe(48).encode())
    der = _new_private_key(alg).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return SigningKey(kid=kid, secret=der, alg=alg)


def add_key(ring: Keyring, key: SigningKey) -> Keyring:
    """Append ``key`` as verify-only (step 1 of a rotation)."""
    if ring.get(key.kid) is not None:
        raise KeyringMisconfigured(f"kid {key.kid!r} is already in the ring")
    return Keyring(keys=(*ring.keys, key))


def promote_key(ring: Keyring, kid: str) -> Keyring:
    """Move ``kid`` to the front so it signs new tokens (step 2); the others keep verifying."""
    key = ring.get(kid)
    if key is None:
        raise KeyringMisconfigured(f"kid {kid!r} is not in the ring ({', '.join(ring.kids())})")
    return Keyring(keys=(key, *(k for k in ring.keys if k.kid != kid)))


def retire_key(ring: Keyring, kid: str) -> Keyring:
    """Drop ``kid`` (step 3); tokens it signed are then rejected with ``unknown_kid``."""
    if ring.get(kid) is None:
        raise KeyringMisconfigured(f"kid {kid!r} is not in the ring ({', '.join(ring.kids())})")
    if ring.current().kid == kid:
        raise KeyringMisconfigured(f"kid {kid!r} is the current signer; promote another key first")
    return Keyring(keys=tuple(k for k in ring.keys if k.kid != kid))


def rotate_keys(ring: Keyring, key: SigningKey) -> Keyring:
    """Add ``key`` as the new current signer in one step; the old keys stay as verify-only."""
    return promote_key(add_key(ring, key), key.kid)


def describe(ring: Keyring) -> list[tuple[str, str, str]]:
    """``[(kid, role, alg)]`` with role ``current`` for the signer and ``verify-only`` for the rest."""
    return [(key.kid, "current" if index == 0 else "verify-only", key.alg) for index, key in enumerate(ring.keys)]


def masked_setting(ring: Keyring) -> str:
    """The ``SIGNING_KEYS`` value with every secret replaced, safe to print or log."""
    return ",".join(
        f"{key.kid}:{key.alg}:<private key hidden>" if key.asymmetric else f"{key.kid}:<secret hidden>"
        for key in ring.keys
    )


def write_keys_file(path: str, ring: Keyring, *, overwrite: bool = False) -> None:
    """Write the ring's value to ``path`` (mode 0600), for ``KHALA_SIGNING_KEYS_FILE``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyringMisconfigured(f"{path} exists; pass --force to overwrite it") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(ring.to_setting() + "\n")
    os.chmod(path, 0o600)  # O_TRUNC keeps an existing file's mode
