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
  With several Redis shards (``REDIS_URL`` lists several) each is checked on its own, as
  ``channel_layer.<i>`` (``i``: its position in ``REDIS_URL``), and ``redis_shards`` maps each ``i``
  to its ``host:port/db``: one dead shard answers 200 "degraded" naming it, and delays only the
  topics routed to it.

Body: ``{"status": "ok" | "degraded" | "unavailable", "checks": {name: "ok" | "error: <type>"},
"failing": [...], "degraded": [...], "redis_shards": {i: "host:port/db"}}`` (the lists only when
non-empty, ``redis_shards`` only with several shards). docs/sync/OPERATIONS.md
("Readiness") says the same for operators.
"""

import asyncio
import contextlib
import logging

from asgiref.sync import async_to_sync
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from khala_project.bus import current_bus

log = logging.getLogger(__name__)

_CHECK_TIMEOUT_SECONDS = 2.0


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _ping_layer(layer) -> None:
    if layer is None:
        raise RuntimeError("no channel layer configured")
    # Round trip through the layer: a message sent to a fresh channel must come back.
    channel = await layer.new_channel()
    try:
        await layer.send(channel, {"type": "khala.readyz"})
    except BaseException:
        await _release(layer, channel)
        raise
    message = await layer.receive(channel)  # a receive cancelled by the timeout releases the channel itself
    await _release(layer, channel)
    if message.get("type") != "khala.readyz":
        raise RuntimeError("channel layer returned an unexpected message")


async def _release(layer, channel: str) -> None:
    """Forget the probe's channel. channels-redis's pub/sub layer subscribes a channel on Redis
    (and keeps a queue for it) from ``new_channel`` until a ``receive`` on it is cancelled, which
    is how a consumer's exit releases its channel; without this every probe left one behind. The
    probe does the same: a receive that starts waiting, cancelled."""
    waiter = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0)  # the receive runs up to its wait on the channel's queue
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter


async def _ping_shards(shards) -> list:
    # Bound each round trip (an unreachable Redis can stall the connect, not only the receive), all
    # shards at once: dead shards cost the probe one timeout, not one each.
    return await asyncio.gather(
        *(asyncio.wait_for(_ping_layer(shard.layer), timeout=_CHECK_TIMEOUT_SECONDS) for shard in shards),
        return_exceptions=True,
    )


def _channel_layer_checks(shards) -> list[tuple[str, BaseException | None]]:
    """``[(check name, error or None)]``: ``channel_layer`` with one shard, else one per shard."""
    outcomes = async_to_sync(_ping_shards)(shards)
    if len(shards) == 1:
        return [("channel_layer", outcomes[0])]
    return [(f"channel_layer.{shard.index}", outcome) for shard, outcome in zip(shards, outcomes)]


# (name, check, required): a failing required check makes the worker unready (503). The channel
# layer's checks (``_channel_layer_checks``) are all optional: a failing one only degrades it (200).
_CHECKS = (
    ("database", _check_database, True),
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
    shards = []
    try:
        shards = current_bus().shards
        layer_checks = _channel_layer_checks(shards)
    except Exception as exc:  # e.g. a layer that cannot even be built
        layer_checks = [("channel_layer", exc)]
    for name, error in layer_checks:
        if error is None:
            checks[name] = "ok"
        else:
            log.warning("readyz: %s is not ready: %s", name, error)
            checks[name] = f"error: {type(error).__name__}"
            degraded.append(name)
    status = "unavailable" if failing else "degraded" if degraded else "ok"
    body = {"status": status, "checks": checks}
    if failing:
        body["failing"] = failing
    if degraded:
        body["degraded"] = degraded
    if len(shards) > 1:
        body["redis_shards"] = {str(shard.index): shard.address for shard in shards}
    return JsonResponse(body, status=503 if failing else 200, headers={"Cache-Control": "no-store"})
