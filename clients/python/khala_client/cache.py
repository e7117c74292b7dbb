"""The local document cache: merge rules over a store.

Rules, applied per topic in watermark order (the docstring of ``merge`` is the contract):

- an update with ``watermark <= last`` (the topic's cursor) is a duplicate and is dropped — the
  server delivers at least once across reconnects, so duplicates are normal;
- otherwise the topic watermark advances to the update's watermark, whatever happens to the doc;
- a document is replaced when the incoming ``doc_version`` is **greater than or equal to** the
  cached one (equal = a reprojection rewrote the same version) and ignored when it is older.

The cache keeps no state of its own beyond the store, so a restart with a ``SQLiteStore`` resumes
exactly where the last committed batch left off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from .protocol import Update
from .stores import Document, MemoryStore, TopicState, WatermarkStore


@dataclass
class MergeResult:
    topic: str
    documents: list[Document] = field(default_factory=list)  # to write (latest per doc_key)
    watermark: int = 0  # the topic cursor after this batch
    applied: int = 0
    ignored_older: int = 0
    duplicates: int = 0


def merge(
    topic: str,
    last_watermark: int,
    cached_version: Callable[[str], int | None],
    updates: Sequence[Update],
) -> MergeResult:
    """Decide what a batch of updates of one topic does to a cache whose cursor is ``last_watermark``.

    Pure: reads cached versions through ``cached_version(doc_key)`` and returns the documents to
    write and the new cursor. Updates of other topics are a caller bug and raise ``ValueError``.
    Updates are taken in watermark order, whatever order they arrived in.
    """
    result = MergeResult(topic, watermark=last_watermark)
    pending: dict[str, Document] = {}
    for update in sorted(updates, key=lambda u: u.watermark):
        if update.topic != topic:
            raise ValueError(f"update of topic {update.topic!r} merged into {topic!r}")
        if update.watermark <= result.watermark:
            result.duplicates += 1
            continue
        result.watermark = update.watermark
        current = pending[update.doc_key].doc_version if update.doc_key in pending else cached_version(update.doc_key)
        if current is not None and update.doc_version < current:
            result.ignored_older += 1
            continue
        pending[update.doc_key] = Document(
            topic, update.doc_key, update.doc_version, update.payload, update.payload_hash,
            update.watermark, update.hydration_required,
        )
        result.applied += 1
    result.documents = list(pending.values())
    return result


class DocumentCache:
    """Documents keyed by ``(topic, doc_key)`` plus per-topic cursors, persisted in ``store``."""

    def __init__(self, store: WatermarkStore | None = None):
        self.store = store if store is not None else MemoryStore()

    def plan(self, topic: str, updates: Sequence[Update]) -> MergeResult:
        """What ``updates`` would do (nothing is written)."""

        def cached_version(doc_key):
            doc = self.store.get(topic, doc_key)
            return None if doc is None else doc.doc_version

        return merge(topic, self.store.topic_state(topic).watermark, cached_version, updates)

    def commit(self, result: MergeResult, stream_epoch: str | None = None) -> int:
        """Write a planned result: documents and cursor in one atomic store step."""
        return self.store.commit(result.topic, result.documents, result.watermark, stream_epoch)

    def apply(self, topic: str, updates: Sequence[Update], stream_epoch: str | None = None) -> MergeResult:
        result = self.plan(topic, updates)
        result.watermark = self.commit(result, stream_epoch)
        return result

    def advance(self, topic: str, watermark: int) -> int:
        """Move the cursor forward without documents (e.g. a heartbeat past rows we may not see)."""
        return self.store.commit(topic, (), watermark)

    def replace_topic(self, topic: str, documents: Iterable[Document], watermark: int, stream_epoch: str | None) -> None:
        self.store.replace_topic(topic, list(documents), watermark, stream_epoch)

    def get(self, topic: str, doc_key: str) -> Document | None:
        return self.store.get(topic, doc_key)

    def documents(self, topic: str) -> dict[str, Document]:
        return self.store.documents(topic)

    def topic_state(self, topic: str) -> TopicState:
        return self.store.topic_state(topic)

    def watermark(self, topic: str) -> int:
        return self.store.topic_state(topic).watermark


__all__ = ["DocumentCache", "MergeResult", "merge"]
