"""Watermark hints on the channel layer: "topic T is now at watermark N".

A hint is only a hint. The channel layer may drop it (Redis blip, full buffer, a worker that
subscribed a moment too late); delivery always reads the journal, and a worker's periodic head
check catches up on anything a lost hint would have announced. Never put document data in a hint.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

HINT_TYPE = "sync.hint"


def topic_group(topic: str) -> str:
    """Channel-layer group of a topic (group names allow [A-Za-z0-9._-], < 100 chars)."""
    return f"sync_topic.{topic}"


def hint_message(topic: str, watermark: int, stream_epoch: str) -> dict:
    return {"type": HINT_TYPE, "topic": topic, "watermark": watermark, "stream_epoch": stream_epoch}


async def publish_hint_async(topic: str, watermark: int, stream_epoch: str) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    # group_send is fire-and-forget: the layer may drop the message. That is acceptable here
    # because subscribers re-read the journal; a lost hint only delays delivery.
    try:
        await layer.group_send(topic_group(topic), hint_message(topic, watermark, stream_epoch))
    except Exception:  # a hint must never fail the write that was already committed
        log.warning("could not publish hint topic=%s watermark=%s", topic, watermark, exc_info=True)


def publish_hint(topic: str, watermark: int, stream_epoch: str) -> None:
    """Publish from sync code (e.g. a ``transaction.on_commit`` callback)."""
    async_to_sync(publish_hint_async)(topic, watermark, stream_epoch)
