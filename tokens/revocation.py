"""Session and device revocation, shared by every worker through the database.

``revoke()`` writes one row per revoked id (``RevokedSession``) in one transaction; after COMMIT it
sends ``{"type": "sync.revoked", "session_ids", "device_ids", "reason"}`` to the channel-layer group
``khala.revocations``. That message is a hint: the layer may drop it, so delivery also re-checks
``revoked_among()`` on its heartbeat tick and ``revoked_reason()`` on every join.

A row is kept until ``expires_at`` = revocation time + ``REVOCATION_TTL_SECONDS`` (default
``TOKEN_TTL_MAX_SECONDS`` + ``TOKEN_CLOCK_SKEW_SECONDS``: no token minted before the revocation can
outlive it). Re-revoking an id refreshes its row. Expired rows are ignored and pruned on the next
``revoke()``.

All functions here are synchronous ORM code (one transaction each); async callers wrap them in
``database_sync_to_async``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Iterable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models import Q

from khala_project.conf import khala_setting
from tokens.metrics import REVOCATIONS
from tokens.models import RevokedSession

log = logging.getLogger(__name__)

REVOCATIONS_GROUP = "khala.revocations"
REVOKED_TYPE = "sync.revoked"
DEFAULT_REASON = "user_requested"
MAX_IDS_PER_KIND = 1000
MAX_ID_LENGTH = 128
_REASON_PATTERN = re.compile(r"^[a-z0-9_.:-]{1,64}$")

# Used when a caller passes no `now`; tests patch it or pass `now=`.
clock = time.time


class InvalidRevocation(ValueError):
    """The revocation request is unusable (no ids, too many, a malformed id or reason)."""


def revocation_ttl_seconds() -> int:
    configured = khala_setting("REVOCATION_TTL_SECONDS")
    if configured is not None:
        return int(configured)
    return int(khala_setting("TOKEN_TTL_MAX_SECONDS")) + int(khala_setting("TOKEN_CLOCK_SKEW_SECONDS"))


def normalize_reason(reason: str | None) -> str:
    """Lower-case, trimmed; ``user_requested`` when absent. A reason is a code, not prose."""
    if reason is None or not str(reason).strip():
        return DEFAULT_REASON
    normalized = str(reason).strip().lower()
    if not _REASON_PATTERN.match(normalized):
        raise InvalidRevocation("reason must be 1-64 characters of [a-z0-9_.:-]")
    return normalized


def _normalize_ids(ids: Iterable[str] | None, kind: str) -> list[str]:
    result: list[str] = []
    for value in ids or ():
        if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_ID_LENGTH:
            raise InvalidRevocation(f"every {kind} id must be a non-empty string of at most {MAX_ID_LENGTH} characters")
        result.append(value.strip())
    result = list(dict.fromkeys(result))
    if len(result) > MAX_IDS_PER_KIND:
        raise InvalidRevocation(f"at most {MAX_IDS_PER_KIND} {kind} ids per request")
    return result


def _as_datetime(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc)


def revoked_message(session_ids: list[str], device_ids: list[str], reason: str) -> dict:
    return {"type": REVOKED_TYPE, "session_ids": session_ids, "device_ids": device_ids, "reason": reason}


def revoke(
    session_ids: Iterable[str] | None,
    device_ids: Iterable[str] | None,
    reason: str | None = None,
    *,
    now: float | None = None,
) -> dict:
    """Record the revocation of ``session_ids`` and ``device_ids``; return what was recorded.

    Returns ``{"revoked_session_ids", "revoked_device_ids", "reason", "revoked_at"}`` (datetime).
    Raises ``InvalidRevocation`` when both lists are empty or an id/reason is malformed.
    """
    sessions = _normalize_ids(session_ids, "session")
    devices = _normalize_ids(device_ids, "device")
    if not sessions and not devices:
        raise InvalidRevocation("give at least one session id or device id")
    reason = normalize_reason(reason)
    revoked_at = _as_datetime(clock() if now is None else now)
    expires_at = revoked_at + dt.timedelta(seconds=revocation_ttl_seconds())
    rows = [
        RevokedSession(kind=kind, value=value, reason=reason, revoked_at=revoked_at, expires_at=expires_at)
        for kind, values in ((RevokedSession.Kind.SESSION, sessions), (RevokedSession.Kind.DEVICE, devices))
        for value in values
    ]
    with transaction.atomic():
        RevokedSession.objects.filter(expires_at__lte=revoked_at).delete()
        RevokedSession.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["kind", "value"],
            update_fields=["reason", "revoked_at", "expires_at"],
        )
        # Only after COMMIT: a worker that reacts to the hint must find the rows.
        transaction.on_commit(lambda: _announce(sessions, devices, reason))
    REVOCATIONS.labels(kind="session").inc(len(sessions))
    REVOCATIONS.labels(kind="device").inc(len(devices))
    return {
        "revoked_session_ids": sessions,
        "revoked_device_ids": devices,
        "reason": reason,
        "revoked_at": revoked_at,
    }


def _announce(session_ids: list[str], device_ids: list[str], reason: str) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    # group_send is fire-and-forget and the layer may drop it; workers also re-check the database
    # on their heartbeat tick, so a lost hint only delays the close.
    try:
        async_to_sync(layer.group_send)(REVOCATIONS_GROUP, revoked_message(session_ids, device_ids, reason))
    except Exception:  # the revocation is committed; a failed hint must not turn it into an error
        log.warning("could not publish sync.revoked hint", exc_info=True)


def revoked_reason(session_id: str | None, device_id: str | None, *, now: float | None = None) -> str | None:
    """The reason ``session_id`` or ``device_id`` was revoked, or None when neither is (any longer)."""
    condition = Q()
    if session_id:
        condition |= Q(kind=RevokedSession.Kind.SESSION, value=session_id)
    if device_id:
        condition |= Q(kind=RevokedSession.Kind.DEVICE, value=device_id)
    if not condition:
        return None
    at = _as_datetime(clock() if now is None else now)
    row = (
        RevokedSession.objects.filter(condition, expires_at__gt=at)
        .order_by("-revoked_at")
        .values_list("reason", flat=True)
        .first()
    )
    return row


def revoked_among(
    session_ids: Iterable[str], device_ids: Iterable[str], *, now: float | None = None
) -> dict:
    """Batch check for a worker: ``{"session_ids": {id: reason}, "device_ids": {id: reason}}``.

    Only revoked ids appear; one query whatever the number of ids.
    """
    sessions = list({s for s in session_ids if s})
    devices = list({d for d in device_ids if d})
    result: dict = {"session_ids": {}, "device_ids": {}}
    if not sessions and not devices:
        return result
    at = _as_datetime(clock() if now is None else now)
    condition = Q(kind=RevokedSession.Kind.SESSION, value__in=sessions) | Q(
        kind=RevokedSession.Kind.DEVICE, value__in=devices
    )
    for kind, value, reason in RevokedSession.objects.filter(condition, expires_at__gt=at).values_list(
        "kind", "value", "reason"
    ):
        result["session_ids" if kind == RevokedSession.Kind.SESSION else "device_ids"][value] = reason
    return result
