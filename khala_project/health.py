"""Liveness and readiness probes.

``/healthz`` only says the process answers. ``/readyz`` checks each dependency Khala needs to
serve (the database and the channel layer) and names the failing part with a 503.
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
    message = await asyncio.wait_for(layer.receive(channel), timeout=_CHECK_TIMEOUT_SECONDS)
    if message.get("type") != "khala.readyz":
        raise RuntimeError("channel layer returned an unexpected message")


def _check_channel_layer() -> None:
    async_to_sync(_ping_channel_layer)()


@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


@require_GET
def readyz(request):
    checks = {}
    failing = []
    for name, check in (("database", _check_database), ("channel_layer", _check_channel_layer)):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # a probe reports every failure; it never raises
            log.warning("readyz: %s is not ready: %s", name, exc)
            checks[name] = f"error: {type(exc).__name__}"
            failing.append(name)
    body = {"status": "ok" if not failing else "unavailable", "checks": checks}
    if failing:
        body["failing"] = failing
    return JsonResponse(body, status=503 if failing else 200, headers={"Cache-Control": "no-store"})
