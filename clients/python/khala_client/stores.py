"""Where a client keeps its cursors (per-topic watermark + stream_epoch) and the documents they cover.

The invariant every store keeps: **a topic's watermark is written in the same atomic step as the
documents it covers.** If the process dies between "applied the documents" and "saved the
watermark", the next start would either replay what it already has (harmless: merge rules drop
it) or, the other way round, skip documents it never stored (data loss). One transaction for both
makes the second case impossible.

Watermarks only move forward through ``commit``; the one way back is ``replace_topic``, the
explicit reset used after a stale cursor (a snapshot replaces the topic's cache and its cursor).

The merge rules (older ``doc_version`` ignored, equal replaces) live in ``khala_client.cache``;
stores repeat the version guard as a last line of defence, so a buggy caller still cannot move a
stored document backwards.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Document:
    topic: str
    doc_key: str
    doc_version: int
    payload: Any
    payload_hash: str | None
    watermark: int
    hydration_required: bool = False


@dataclass(frozen=True)
class TopicState:
    watermark: int = 0
    stream_epoch: str | None = None


class WatermarkStore:
    """Interface of a client store. Subclasses implement every method."""

    def topic_state(self, topic: str) -> TopicState:
        raise NotImplementedError("WatermarkStore.topic_state")

    def topics(self) -> dict[str, TopicState]:
        raise NotImplementedError("WatermarkStore.topics")

    def get(self, topic: str, doc_key: str) -> Document | None:
        raise NotImplementedError("WatermarkStore.get")

    def documents(self, topic: str) -> dict[str, Document]:
        raise NotImplementedError("WatermarkStore.documents")

    def commit(
        self, topic: str, documents: Iterable[Document], watermark: int, stream_epoch: str | None = None
    ) -> int:
        """Atomically upsert ``documents`` and move the topic watermark to ``max(current, watermark)``.

        A document whose stored ``doc_version`` is greater is left alone. Returns the new watermark.
        """
        raise NotImplementedError("WatermarkStore.commit")

    def replace_topic(self, topic: str, documents: Iterable[Document], watermark: int, stream_epoch: str | None) -> None:
        """Atomically replace every document of ``topic`` and set its cursor (may move it back)."""
        raise NotImplementedError("WatermarkStore.replace_topic")

    def clear_topic(self, topic: str) -> None:
        self.replace_topic(topic, (), 0, None)

    def close(self) -> None:
        pass


class MemoryStore(WatermarkStore):
    """Process-local store (the default). Lost on exit; the next start replays from the server."""

    def __init__(self):
        self._topics: dict[str, TopicState] = {}
        self._docs: dict[str, dict[str, Document]] = {}

    def topic_state(self, topic):
        return self._topics.get(topic, TopicState())

    def topics(self):
        return dict(self._topics)

    def get(self, topic, doc_key):
        return self._docs.get(topic, {}).get(doc_key)

    def documents(self, topic):
        return dict(self._docs.get(topic, {}))

    def commit(self, topic, documents, watermark, stream_epoch=None):
        docs = self._docs.setdefault(topic, {})
        for doc in documents:
            current = docs.get(doc.doc_key)
            if current is None or doc.doc_version >= current.doc_version:
                docs[doc.doc_key] = doc
        state = self.topic_state(topic)
        new = TopicState(max(state.watermark, int(watermark)), stream_epoch or state.stream_epoch)
        self._topics[topic] = new
        return new.watermark

    def replace_topic(self, topic, documents, watermark, stream_epoch):
        self._docs[topic] = {doc.doc_key: doc for doc in documents}
        self._topics[topic] = TopicState(int(watermark), stream_epoch)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS khala_topics (
    topic TEXT PRIMARY KEY,
    watermark INTEGER NOT NULL CHECK (watermark >= 0),
    stream_epoch TEXT
);
CREATE TABLE IF NOT EXISTS khala_documents (
    topic TEXT NOT NULL,
    doc_key TEXT NOT NULL,
    doc_version INTEGER NOT NULL,
    payload TEXT,
    payload_hash TEXT,
    watermark INTEGER NOT NULL,
    hydration_required INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, doc_key)
);
"""
_SCHEMA_VERSION = 1


class SQLiteStore(WatermarkStore):
    """Durable store in one SQLite file: survives restarts, resumes from its cursor.

    Every ``commit``/``replace_topic`` is one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``), so a
    crash leaves either the old documents with the old watermark or the new ones with the new
    watermark. WAL mode lets a second process (``khala status``) read while a client writes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so the transaction boundaries are
        # exactly the ones documented above rather than the sqlite3 module's implicit ones.
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            raise RuntimeError(f"{self.path}: store schema version {version} is newer than this client ({_SCHEMA_VERSION})")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def _row_to_doc(self, topic, row) -> Document:
        doc_key, doc_version, payload, payload_hash, watermark, hydration_required = row
        return Document(
            topic, doc_key, doc_version, None if payload is None else json.loads(payload),
            payload_hash, watermark, bool(hydration_required),
        )

    def topic_state(self, topic):
        row = self._db.execute("SELECT watermark, stream_epoch FROM khala_topics WHERE topic = ?", (topic,)).fetchone()
        return TopicState(row[0], row[1]) if row else TopicState()

    def topics(self):
        return {t: TopicState(w, e) for t, w, e in self._db.execute("SELECT topic, watermark, stream_epoch FROM khala_topics")}

    _DOC_COLUMNS = "doc_key, doc_version, payload, payload_hash, watermark, hydration_required"

    def get(self, topic, doc_key):
        row = self._db.execute(
            f"SELECT {self._DOC_COLUMNS} FROM khala_documents WHERE topic = ? AND doc_key = ?", (topic, doc_key)
        ).fetchone()
        return None if row is None else self._row_to_doc(topic, row)

    def documents(self, topic):
        rows = self._db.execute(f"SELECT {self._DOC_COLUMNS} FROM khala_documents WHERE topic = ?", (topic,))
        return {row[0]: self._row_to_doc(topic, row) for row in rows}

    @staticmethod
    def _doc_params(doc: Document):
        payload = None if doc.payload is None else json.dumps(doc.payload, separators=(",", ":"), ensure_ascii=False)
        return (doc.topic, doc.doc_key, doc.doc_version, payload, doc.payload_hash, doc.watermark, int(doc.hydration_required))

    def _upsert_documents(self, documents):
        self._db.executemany(
            "INSERT INTO khala_documents (topic, doc_key, doc_version, payload, payload_hash, watermark, hydration_required)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (topic, doc_key) DO UPDATE SET doc_version = excluded.doc_version,"
            " payload = excluded.payload, payload_hash = excluded.payload_hash, watermark = excluded.watermark,"
            " hydration_required = excluded.hydration_required"
            " WHERE excluded.doc_version >= khala_documents.doc_version",
            [self._doc_params(d) for d in documents],
        )

    def commit(self, topic, documents, watermark, stream_epoch=None):
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._upsert_documents(documents)
            db.execute(
                "INSERT INTO khala_topics (topic, watermark, stream_epoch) VALUES (?, ?, ?)"
                " ON CONFLICT (topic) DO UPDATE SET watermark = max(khala_topics.watermark, excluded.watermark),"
                " stream_epoch = coalesce(excluded.stream_epoch, khala_topics.stream_epoch)",
                (topic, int(watermark), stream_epoch),
            )
            (new,) = db.execute("SELECT watermark FROM khala_topics WHERE topic = ?", (topic,)).fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return new

    def replace_topic(self, topic, documents, watermark, stream_epoch):
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM khala_documents WHERE topic = ?", (topic,))
            self._upsert_documents(documents)
            db.execute(
                "INSERT INTO khala_topics (topic, watermark, stream_epoch) VALUES (?, ?, ?)"
                " ON CONFLICT (topic) DO UPDATE SET watermark = excluded.watermark, stream_epoch = excluded.stream_epoch",
                (topic, int(watermark), stream_epoch),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self):
        self._db.close()
