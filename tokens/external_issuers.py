"""Issuers other than Khala whose sync tokens the verifier trusts, and the cache of their public keys.

``TRUSTED_ISSUERS`` (a setting) lists them: ``[{"issuer", "audience", "jwks_url", "algorithms"?}]``.
A token whose (unverified) ``iss`` names one of them is verified with a key of that issuer's JWKS,
selected by the token's ``kid``, and must then carry exactly that ``iss`` and ``aud``. The claims are
otherwise Khala's own (``oa_user_id``, ``oa_sync_scopes`` …): trusting an issuer means accepting its
signature on those claims, nothing looser. Only asymmetric keys are trusted (``algorithms`` defaults
to EdDSA, ES256 and RS256; ``HS*`` and ``none`` are refused at configuration): a JWKS is public, and a
symmetric key in it would let anyone mint.

Key cache (``IssuerKeys``), per issuer, with an injectable clock:
- the JWKS is fetched on first use and again once it is older than ``JWKS_MAX_AGE_SECONDS``;
- a token naming an unknown ``kid`` triggers a refetch (that is how a rotation at the issuer is
  picked up), but fetches never happen more often than every ``JWKS_MIN_REFRESH_SECONDS``: a flood
  of tokens with made-up kids costs at most one fetch per interval, the rest are ``unknown_kid``;
- a failed fetch keeps the keys already known (an issuer outage does not revoke its live tokens)
  and counts toward the same interval, so a dead endpoint is not hammered either.
One lock per issuer serialises fetches, so concurrent verifications of a new kid wait for the one
fetch in flight instead of starting their own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import jwt
from jwt import PyJWKClient, PyJWKSet

from khala_project.conf import khala_setting
from tokens.keyring import ASYMMETRIC_ALGORITHMS
from tokens.metrics import JWKS_FETCHES

logger = logging.getLogger("khala.tokens")

# Monotonic time for the cache's ages and intervals; tests replace it to drive them.
clock = time.monotonic


class IssuerMisconfigured(Exception):
    """``TRUSTED_ISSUERS`` is malformed; ``str(exc)`` names the entry and the problem."""


@dataclass(frozen=True)
class TrustedIssuer:
    issuer: str
    audience: str
    jwks_url: str
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS


def parse_trusted_issuers(raw) -> tuple[TrustedIssuer, ...]:
    """Validate the ``TRUSTED_ISSUERS`` setting; raise ``IssuerMisconfigured`` naming the bad entry."""
    if not raw:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise IssuerMisconfigured("TRUSTED_ISSUERS must be a list of {issuer, audience, jwks_url} objects")
    issuers: list[TrustedIssuer] = []
    for position, entry in enumerate(raw, start=1):
        if not isinstance(entry, dict):
            raise IssuerMisconfigured(f"TRUSTED_ISSUERS entry {position} is not an object")
        unknown = set(entry) - {"issuer", "audience", "jwks_url", "algorithms"}
        if unknown:
            raise IssuerMisconfigured(f"TRUSTED_ISSUERS entry {position} has unknown keys: {', '.join(sorted(unknown))}")
        for name in ("issuer", "audience", "jwks_url"):
            if not isinstance(entry.get(name), str) or not entry[name].strip():
                raise IssuerMisconfigured(f"TRUSTED_ISSUERS entry {position}: {name!r} must be a non-empty string")
        if not entry["jwks_url"].startswith(("https://", "http://")):
            raise IssuerMisconfigured(f"TRUSTED_ISSUERS entry {position}: jwks_url must be an http(s) URL")
        algorithms = tuple(entry.get("algorithms") or ASYMMETRIC_ALGORITHMS)
        refused = [alg for alg in algorithms if alg not in ASYMMETRIC_ALGORITHMS]
        if refused:
            raise IssuerMisconfigured(
                f"TRUSTED_ISSUERS entry {position}: algorithms {refused} not accepted "
                f"(only {', '.join(ASYMMETRIC_ALGORITHMS)}; a published key must not be symmetric)"
            )
        if entry["issuer"] == khala_setting("TOKEN_ISSUER"):
            raise IssuerMisconfigured(
                f"TRUSTED_ISSUERS entry {position}: {entry['issuer']!r} is this server's own TOKEN_ISSUER"
            )
        issuers.append(TrustedIssuer(entry["issuer"], entry["audience"], entry["jwks_url"], algorithms))
    return tuple(issuers)


def trusted_issuer(iss) -> TrustedIssuer | None:
    """The configured issuer named ``iss``, or None. A malformed setting trusts nobody (and the
    ``tokens.E006`` check says why)."""
    if not isinstance(iss, str):
        return None
    try:
        issuers = parse_trusted_issuers(khala_setting("TRUSTED_ISSUERS"))
    except IssuerMisconfigured:
        return None
    return next((issuer for issuer in issuers if issuer.issuer == iss), None)


def fetch_jwks(url: str, timeout: float) -> dict:
    """GET the JWK Set at ``url`` (no redirects); PyJWT's client raises ``PyJWKClientError`` on failure."""
    return PyJWKClient(url, cache_jwk_set=False, cache_keys=False, timeout=timeout).fetch_data()


@dataclass(frozen=True)
class VerificationKey:
    """A key of an external issuer: what the verifier needs, shaped like ``keyring.SigningKey``."""

    kid: str
    alg: str
    key: object = field(repr=False)

    def verification_key(self):
        return self.key


class IssuerKeys:
    """One issuer's JWKS, cached; see the module docstring for the refresh rules."""

    def __init__(self, issuer: TrustedIssuer, *, fetch=None, max_age: float, min_refresh: float, timeout: float):
        self.issuer = issuer
        self._fetch = fetch  # None: this module's fetch_jwks, looked up at call time (tests replace it)
        self.max_age = max_age
        self.min_refresh = min_refresh
        self.timeout = timeout
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._lock = threading.Lock()

    def fetch_due(self, kid: str) -> bool:
        """Whether looking ``kid`` up now would fetch (stale set, or unknown kid past the interval)."""
        now = clock()
        if self._attempted_at is not None and now - self._attempted_at < self.min_refresh:
            return False
        stale = self._fetched_at is None or now - self._fetched_at >= self.max_age
        return stale or kid not in self._keys

    def get(self, kid: str, *, allow_fetch: bool = True) -> VerificationKey | None:
        """The key named ``kid``, fetching first when due and ``allow_fetch``; None if unknown."""
        if allow_fetch and self.fetch_due(kid):
            with self._lock:
                # Re-checked under the lock: a concurrent caller may have fetched meanwhile.
                if self.fetch_due(kid):
                    self._refresh()
        return self._keys.get(kid)

    def refresh_for(self, kid: str) -> None:
        """Fetch if ``kid`` makes a fetch due (the async verifier calls this from a thread)."""
        self.get(kid)

    def _refresh(self) -> None:
        self._attempted_at = clock()
        try:
            keys = self._parse((self._fetch or fetch_jwks)(self.issuer.jwks_url, self.timeout))
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            JWKS_FETCHES.labels(issuer=self.issuer.issuer, result="error").inc()
            logger.warning("JWKS fetch for issuer %r failed (%s); keeping %d known keys", self.issuer.issuer, exc, len(self._keys))
            return
        JWKS_FETCHES.labels(issuer=self.issuer.issuer, result="ok").inc()
        self._keys = keys
        self._fetched_at = self._attempted_at

    def _parse(self, data) -> dict[str, VerificationKey]:
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("the JWKS is not a JSON object with a 'keys' list")
        # An encryption key ("use": "enc") is not a signing key.
        signing = [jwk for jwk in data["keys"] if isinstance(jwk, dict) and jwk.get("use", "sig") == "sig"]
        keys: dict[str, VerificationKey] = {}
        for jwk in PyJWKSet(signing).keys:
            # A key without kid cannot be selected; a symmetric or unlisted-algorithm key is never
            # trusted, whatever the JWKS says.
            if not jwk.key_id or jwk.algorithm_name not in self.issuer.algorithms:
                continue
            keys[jwk.key_id] = VerificationKey(kid=jwk.key_id, alg=jwk.algorithm_name, key=jwk.key)
        return keys


_caches: dict[tuple, IssuerKeys] = {}
_caches_lock = threading.Lock()


def keys_of(issuer: TrustedIssuer) -> IssuerKeys:
    """The process-wide key cache of ``issuer`` (one per configuration, so a settings change starts afresh)."""
    config = (
        issuer,
        float(khala_setting("JWKS_MAX_AGE_SECONDS")),
        float(khala_setting("JWKS_MIN_REFRESH_SECONDS")),
        float(khala_setting("JWKS_FETCH_TIMEOUT_SECONDS")),
    )
    with _caches_lock:
        cache = _caches.get(config)
        if cache is None:
            cache = _caches[config] = IssuerKeys(issuer, max_age=config[1], min_refresh=config[2], timeout=config[3])
        return cache


def reset_caches() -> None:
    """Forget every cached JWKS (tests)."""
    with _caches_lock:
        _caches.clear()
