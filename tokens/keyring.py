"""The signing keyring: which HS256 secrets sign and verify sync tokens, named by ``kid``.

The ring comes from the ``SIGNING_KEYS`` setting (env ``KHALA_SIGNING_KEYS``), written
``kid:secret[,kid:secret…]``. The FIRST key is the current signer; every key in the ring verifies.
That one ordering rule is the whole rotation model (docs/sync/KEY_ROTATION.md): append a new key
(verify-only) → move it to the front (promote) → drop the old one (retire).

When ``SIGNING_KEYS`` is empty the value may come from the file named by ``SIGNING_KEYS_FILE``
(env ``KHALA_SIGNING_KEYS_FILE``; `make run` uses ``var/dev-signing-keys``). There is no other
fallback: without a key the issuers answer 503 and the verifier rejects every token.

Settings are read on every call (tests use ``override_settings``); parsing is cached by the raw
value, so a hot path pays one dict lookup.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import time
from dataclasses import dataclass, field

from khala_project.conf import khala_setting

# HS256 keys shorter than the hash output (32 bytes) weaken HMAC (RFC 7518 §3.2 requires >= 256 bits).
MIN_SECRET_BYTES = 32
KID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")


class KeyringMisconfigured(Exception):
    """The configured keys cannot be used; ``str(exc)`` says why without revealing any secret."""


class NoSigningKey(KeyringMisconfigured):
    """No key is configured at all (the development default)."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    # repr=False: a key that ends up in a log line or a traceback must not leak its secret.
    secret: bytes = field(repr=False)


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
        return ",".join(f"{key.kid}:{key.secret.decode()}" for key in self.keys)


@functools.lru_cache(maxsize=16)
def parse_signing_keys(raw: str) -> Keyring:
    """Parse ``kid:secret[,kid:secret…]``; raise ``KeyringMisconfigured`` naming the bad entry."""
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
        secret_bytes = secret.encode("utf-8")
        if len(secret_bytes) < MIN_SECRET_BYTES:
            raise KeyringMisconfigured(
                f"signing key {kid!r} is {len(secret_bytes)} bytes; HS256 needs at least {MIN_SECRET_BYTES}"
            )
        seen.add(kid)
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


def generate_key(*, now: float | None = None, token_hex=secrets.token_hex, token_urlsafe=secrets.token_urlsafe) -> SigningKey:
    """A fresh key: kid ``ks-<UTC date>-<6 hex>`` (the date tells operators its age), 48 random bytes."""
    stamp = time.strftime("%Y%m%d", time.gmtime(time.time() if now is None else now))
    # token_urlsafe's alphabet has no ':' or ',', so the secret never breaks the setting's syntax.
    return SigningKey(kid=f"ks-{stamp}-{token_hex(3)}", secret=token_urlsafe(48).encode())


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


def describe(ring: Keyring) -> list[tuple[str, str]]:
    """``[(kid, role)]`` with role ``current`` for the signer and ``verify-only`` for the rest."""
    return [(key.kid, "current" if index == 0 else "verify-only") for index, key in enumerate(ring.keys)]


def masked_setting(ring: Keyring) -> str:
    """The ``SIGNING_KEYS`` value with every secret replaced, safe to print or log."""
    return ",".join(f"{key.kid}:<secret hidden>" for key in ring.keys)


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
