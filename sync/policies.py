"""Join policies of the sync socket: one small class per decision, one hook each.

- ``CompatibilityGate.check(params, claims)``: the client build / protocol / schema window
  (``docs/protocol/OA_SYNC_WS_MAPPING.md``, compatibility gate), only when ``COMPAT_ENFORCED``.
- ``TokenAuthentication.authenticate(token)``: ``tokens.verifier`` (CPU only, no database).
- ``RevocationCheck.revoked_reason(principal)`` / ``revoked_among(principals)``: the statements of
  ``tokens.revocation`` run on the worker's journal reader (its bounded async pool; never Django's
  single thread-sensitive executor, never a new connection per join); called at join and once per
  heartbeat interval per worker (one query for all its sockets), never per frame.

- ``JoinPolicy.admit(params)``: the three above in order, as the session's join uses them, with the
  per-user admission limits (``sync.admission``) between the token and the revocation read;
  ``JoinPolicy.socket_rate()``: the per-socket join rate, checked before anything else a join does.
- ``RefreshPolicy.refresh(current, payload)``: ``sync:refresh``, the same token verification and
  revocation read as a join, for the same subject and session only.
- ``session_deadline(principal, now)``: when a session on that token ends (``exp`` + grace).

Each returns/raises values the session turns into frames with codes from ``sync.errors``. A
refusal is counted here (``khala_ws_joins_total`` / ``khala_ws_refreshes_total`` by code or
reason); an admitted join or refresh is counted by the session once it has taken effect.
"""

from __future__ import annotations

import datetime as dt

from khala_project.conf import khala_setting
from sync import metrics
from sync.errors import close_code, error_payload
from sync.protocol import PROTOCOL_VERSION


class JoinRefused(Exception):
    """The join (or refresh) is refused with ``payload`` (an error-table payload); ``close``: the
    socket then closes with the code's close code (by default when the code has one)."""

    def __init__(self, payload: dict, *, close: bool | None = None):
        super().__init__(payload["code"])
        self.payload = payload
        self.code = payload["code"]
        self.close = close_code(self.code) is not None if close is None else close


class CompatibilityGate:
    """Refuses client builds/protocols/schemas outside the configured ``COMPAT_*`` window, so a client
    too old (or too new) for this server hears ``upgrade_required`` with the window it must meet."""

    def enabled(self) -> bool:
        return bool(khala_setting("COMPAT_ENFORCED"))

    def check(self, params: dict, claims: dict) -> None:
        if not self.enabled():
            return

        def value(param, claim):
            raw = params.get(param)
            return raw if raw not in (None, "") else claims.get(claim)

        build = value("client_build_id", "oa_client_build_id")
        protocol = value("protocol_version", "oa_protocol_version")
        schema = value("schema_version", "oa_schema_version")
        min_build = khala_setting("COMPAT_MIN_CLIENT_BUILD_ID")
        max_build = khala_setting("COMPAT_MAX_CLIENT_BUILD_ID") or None
        min_schema = int(khala_setting("COMPAT_MIN_SCHEMA_VERSION"))
        max_schema = int(khala_setting("COMPAT_MAX_SCHEMA_VERSION"))
        expected_protocol = khala_setting("COMPAT_PROTOCOL_VERSION")
        try:
            schema_number = int(schema) if schema not in (None, "") else None
        except (TypeError, ValueError):
            schema_number = None
        reason = None
        if not isinstance(build, str) or not build.strip():
            reason, message = "invalid_client_build", "client_build_id is required"
        elif protocol != expected_protocol:
            reason, message = "unsupported_protocol_version", f"protocol_version must be {expected_protocol!r}"
        elif schema_number is None or not (min_schema <= schema_number <= max_schema):
            reason, message = "unsupported_schema_version", f"schema_version must be within [{min_schema}, {max_schema}]"
        elif build < min_build:
            reason, message = "upgrade_required", f"client build is older than {min_build}"
        elif max_build is not None and build > max_build:
            reason, message = "unsupported_client_build", f"client build is newer than {max_build}"
        if reason is not None:
            raise JoinRefused(
                error_payload(
                    "upgrade_required",
                    message,
                    reason=reason,
                    retryable=False,
                    upgrade_required=True,
                    surface="khala_websocket",
                    min_client_build_id=min_build,
                    max_client_build_id=max_build,
                    min_schema_version=min_schema,
                    max_schema_version=max_schema,
                    protocol_version=expected_protocol or PROTOCOL_VERSION,
                )
            )


class TokenAuthentication:
    def authenticate(self, token):
        from tokens.verifier import TokenRejected, verify_sync_token

        try:
            return verify_sync_token(token)
        except TokenRejected as exc:
            raise JoinRefused(error_payload("unauthorized", None, reason=exc.reason)) from None


def reauth_payload(reason: str) -> dict:
    return error_payload("reauth_required", None, reauth_required=True, reason=reason)


class RevocationCheck:
    """Revocation of a principal's session or device, read through ``reader`` (``sync.journal.Journal``
    or ``SQLiteJournal``: their ``revocations()`` run ``tokens.revocation.revocation_lookups``, and
    the answers come from the same ``reason_from_rows`` / ``among_from_rows`` as the sync
    functions, so both paths mean the same thing, expiry included). Time: ``tokens.revocation.clock``."""

    def __init__(self, reader):
        self.reader = reader

    @staticmethod
    def _at():
        from tokens import revocation

        return dt.datetime.fromtimestamp(revocation.clock(), tz=dt.timezone.utc)

    async def revoked_reason(self, principal) -> str | None:
        from tokens.revocation import reason_from_rows

        session_id, device_id = principal.session_id, principal.device_id
        if not session_id and not device_id:
            return None
        rows = await self.reader.revocations([session_id] if session_id else [], [device_id] if device_id else [], self._at())
        return reason_from_rows(rows)

    async def revoked_among(self, principals) -> dict:
        """``{(session_id, device_id): reason}`` for the revoked ones among ``principals``."""
        from tokens.revocation import among_from_rows

        principals = list(principals)
        sessions = sorted({p.session_id for p in principals if p.session_id})
        devices = sorted({p.device_id for p in principals if p.device_id})
        if not sessions and not devices:
            return {}
        found = among_from_rows(await self.reader.revocations(sessions, devices, self._at()))
        out = {}
        for p in principals:
            reason = found["session_ids"].get(p.session_id) or found["device_ids"].get(p.device_id)
            if reason:
                out[(p.session_id, p.device_id)] = reason
        return out


class JoinPolicy:
    """The join's one decision: who is joining, or why not (``JoinRefused``). Token first, then
    the compatibility window, then revocation. When the gate is enforced and the token is refused,
    the gate's verdict on the connect parameters alone wins: a client too old to mint tokens
    correctly should hear "upgrade", not "unauthorized"."""

    def __init__(self, revocation: RevocationCheck, admission=None):
        self.gate = CompatibilityGate()
        self.auth = TokenAuthentication()
        self.revocation = revocation
        self.admission = admission  # sync.admission.SocketAdmission, or None: no per-user limits

    async def socket_rate(self) -> None:
        """``joins_per_socket``: before anything else a join does, the token's verification included."""
        if self.admission is not None:
            refusal = await self.admission.per_socket("joins_per_socket")
            if refusal is not None:
                metrics.JOINS.labels(result="rate_limited").inc()
                raise JoinRefused(refusal)

    async def admit(self, params: dict):
        try:
            return await self._admit(params)
        except JoinRefused as refused:
            metrics.JOINS.labels(result=refused.code).inc()
            raise

    async def _admit(self, params: dict):
        try:
            principal = self.auth.authenticate(params.get("token"))
            self.gate.check(params, principal.claims)
            if self.admission is not None:
                # After the token (CPU only) and before the revocation read (the join's first
                # database work): a flood of joins costs Redis round trips, never pool time.
                refusal = await self.admission.admit_user(principal.subject)
                if refusal is not None:
                    raise JoinRefused(refusal)
            reason = await self.revocation.revoked_reason(principal)
            if reason:
                raise JoinRefused(reauth_payload(reason))
            return principal.without_claims()  # the session keeps it as long as the socket lives
        except JoinRefused as refused:
            if refused.code == "unauthorized" and self.gate.enabled():
                self.gate.check(params, {})  # raises the gate's refusal if the params fail it
            raise


class RefreshPolicy:
    """``sync:refresh {token}``: the new token is verified exactly like a join token (the same
    ``TokenAuthentication``, then the same revocation read) and must speak for the same subject AND
    the same session (``oa_session_id``) as the socket's current one.

    Refusals: a token the verifier refuses (expired, forged, unknown kid …) → ``unauthorized`` with
    the verifier's ``reason``; the socket stays open on its current token until that one's deadline,
    so the client may try again. Another subject or session → ``unauthorized``
    (``subject_mismatch`` / ``session_mismatch``) and the socket closes: a socket never changes
    hands. A revoked session or device → ``reauth_required`` and the socket closes, as revocation
    would close it anyway."""

    def __init__(self, revocation: RevocationCheck):
        self.auth = TokenAuthentication()
        self.revocation = revocation

    async def refresh(self, current, payload):
        """The principal ``payload`` (the frame's) refreshes ``current`` to, or ``JoinRefused``."""
        try:
            return await self._refresh(current, payload.get("token") if isinstance(payload, dict) else None)
        except JoinRefused as refused:
            metrics.REFRESHES.labels(result=refused.payload.get("reason") or refused.code).inc()
            raise

    async def _refresh(self, current, token):
        try:
            principal = self.auth.authenticate(token)
        except JoinRefused as refused:
            raise JoinRefused(refused.payload, close=False) from None
        if principal.subject != current.subject:
            raise JoinRefused(error_payload("unauthorized", "the refresh token is for another subject", reason="subject_mismatch"))
        if principal.session_id != current.session_id:
            raise JoinRefused(error_payload("unauthorized", "the refresh token is for another session", reason="session_mismatch"))
        reason = await self.revocation.revoked_reason(principal)
        if reason:
            raise JoinRefused(reauth_payload(reason))
        return principal.without_claims()


def session_deadline(principal, now: float) -> float:
    """When a session on ``principal``'s token ends, on the session's clock (``now`` = that clock's
    reading): ``exp`` is wall-clock time, so the remaining lifetime is measured once against the
    verifier's wall clock (``tokens.verifier.clock``) and carried onto the session's monotonic
    clock, which no wall-clock step can move afterwards."""
    from tokens import verifier

    remaining = principal.expires_at - verifier.clock()
    return now + remaining + float(khala_setting("SESSION_EXPIRY_GRACE_SECONDS"))
