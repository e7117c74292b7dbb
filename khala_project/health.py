"""Liveness and readiness probes.

``/healthz`` only says the process answers.

``/readyz`` says whether this worker should take traffic, and it answers by what Khala needs:

- **database** is required. PostgreSQL is the authority and the journal is what every socket is
  served from: without it nothing can be replayed, hydrated or written, so the probe answers 503
  and names it in ``failing``.
- **channel_layer** (Redis) is optional. Its messages are hints that make live delivery prompt;
  every worker also re-reads its topics' heads from the journal every
  ``HEAD_CHECK_INTERVAL_SECONDS``, so without Redis delivery continues, only later. A Redis
  outage therefore answers **200** with ``"status": "degraded"`` and the part named in
  ``degraded``: taking every worker out of a balancer for it would turn a slowdown into an outage.

Body: ``{"status": "ok" | "degraded" | "unavailable", "checks": {name: "ok" | "error: <type>"},
"failing": [...], "degraded": [...]}`` (the lists only when non-empty). docs/sync/OPERATIONS.md
("Readiness") says the same for operators.
"""

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

log = logging.getLogger(__name__)

_CHECK_TIMEOUT_SECONDS = 2.0


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _ping_channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    # Round trip through the layer: a message sent to a fresh channel must come back.
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "khala.readyz"})
    message = await layer.receive(channel)
    if message.get("type") != "khala.readyz":
        raise RuntimeError("channel layer returned an unexpected message")


async def _ping_channel_layer_bounded() -> None:
    # Bound the whole round trip: an unreachable Redis can stall the connect, not only the receive.
    await asyncio.wait_for(_ping_channel_layer(), timeout=_CHECK_TIMEOUT_SECONDS)


def _check_channel_layer() -> None:
    async_to_sync(_ping_channel_layer_bounded)()


# (name, check, required): a failing required check makes the worker unready (503); a failing
# optional one only degrades it (200).
_CHECKS = (
    ("database", _check_database, True),
    ("channel_layer", _check_channel_layer, False),
)


@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


@require_GET
def readyz(request):
    checks = {}
    failing = []
    degraded = []
    for name, check, required in _CHECKS:
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # a probe reports every failure; it never raises
            log.warning("readyz: %s is not ready: %s", name, exc)
            checks[name] = f"error: {type(exc).__name__}"
            (failing if required else degraded).append(name)
    status = "unavailable" if failing else "degraded" if degraded else "ok"
    body = {"status": status, "checks": checks}
    if failing:
        body["failing"] = failing
    if degraded:
        body["degraded"] = degraded
    return JsonResponse(body, status=503 if failing else 200, headers={"Cache-Control": "no-store"})
