"""Read side of HTTP hydration: one document, or one consistent snapshot page of a topic.

Both reads apply the owner filter of the WebSocket lane: a principal sees the documents whose
``owner`` equals its token's ``org_id`` and the documents marked ``public``. Anything else is
reported exactly like a missing document.

Why a list page is read in one REPEATABLE READ transaction
----------------------------------------------------------
The sink writes the read model, the journal row and ``sync_topic_sequences.last_watermark`` in
one transaction, so in any snapshot the read models reflect exactly the writes with
``watermark <= last_watermark`` of that same snapshot. Reading the page *and* the sequence row
in one snapshot therefore makes ``head_watermark`` an exact statement: "this page is the state
at head_watermark". Two separate statements under READ COMMITTED could see a newer head than the
page (a client resuming from that head would skip the write in between) or an older one.

Pages are keyset-paginated on ``doc_key`` (index ``(owner, topic, doc_key)``), never OFFSET, and
each page is its own snapshot; ``docs/protocol/OA_SYNC_WS_MAPPING.md`` ("HTTP hydration") says
how a client stitches pages and the live stream together (resume from the FIRST page's head).

Streaming replicas (``DATABASE_REPLICA_URLS``)
----------------------------------------------
A read may be served by a replica only when its own snapshot proves it is not older than what the
client already holds: the topic's head in that snapshot is at or past a stated watermark, in the
stated ``stream_epoch``. Because the read models of a topic change only together with its head,
such a snapshot holds every document write up to that watermark: never an older version of a
document the client has seen. The statement comes from the client (``min_watermark`` and
``stream_epoch`` of what it holds) or, for pages after the first, from the cursor (the first
page's head: every later page must be at least that new, else a document changed in between
would be older than the resume point covers). No statement, a replica behind it, another epoch
or an unknown topic: the read goes to the primary, which alone answers the errors.
"""

import base64
import binascii
import logging
import time
from dataclasses import dataclass

import orjson
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction

from khala_project.api_errors import CodedError
from khala_project.conf import khala_setting
from khala_project.replicas import replica_aliases
from projector.payload_hash import to_wire
from sync import metrics

log = logging.getLogger(__name__)

CURSOR_VERSION = 1


class HydrationError(CodedError):
    """A request that cannot be served; ``code`` is the stable API error code."""


@dataclass(frozen=True)
class Need:
    """What a replica's snapshot must show for a read to be served by it: the topic at or past
    ``head``, in ``stream_epoch``."""

    head: int
    stream_epoch: str


class _Behind(Exception):
    """A replica's snapshot is older than the read's ``Need`` (or shows an error only the primary
    may answer): read the primary."""


# alias -> monotonic time until which a failed replica is left alone (per process).
_down_until: dict[str, float] = {}
_turn = [0]


def _replica_then_primary(need: "Need | None", read):
    """``read(alias)`` on a replica whose snapshot satisfies ``need`` (``read`` raises ``_Behind``
    when it does not), else on the primary. Counted in the ``khala_replica_*`` metrics."""
    aliases = replica_aliases()
    if not aliases or need is None or connection.vendor != "postgresql":
        return read(DEFAULT_DB_ALIAS)
    now = time.monotonic()
    up = [alias for alias in aliases if _down_until.get(alias, 0.0) <= now]
    reason = "unavailable"
    if up:
        _turn[0] += 1
        alias = up[_turn[0] % len(up)]
        try:
            result = read(alias)
        except _Behind:
            reason = "behind"
        except HydrationError:
            raise
        except Exception as exc:
            _down_until[alias] = now + float(khala_setting("REPLICA_RETRY_SECONDS"))
            connections[alias].close()
            log.warning("replica %s unavailable for hydration (%s); reading the primary", alias, f"{type(exc).__name__}: {exc}"[:200])
        else:
            metrics.REPLICA_READS.labels(purpose="hydration", target="replica").inc()
            return result
    metrics.REPLICA_FALLBACKS.labels(purpose="hydration", reason=reason).inc()
    metrics.REPLICA_READS.labels(purpose="hydration", target="primary").inc()
    return read(DEFAULT_DB_ALIAS)


def _require(alias: str, need: "Need | None", seq) -> None:
    """On a replica: its ``(head, stream_epoch)`` row must satisfy ``need`` (no row: behind too)."""
    if alias != DEFAULT_DB_ALIAS and (seq is None or seq[0] < need.head or seq[1] != need.stream_epoch):
        raise _Behind()


@dataclass(frozen=True)
class Page:
    documents: list[dict]
    head_watermark: int
    stream_epoch: str
    next_cursor: str | None


def _document(doc_key, doc_version, payload, payload_hash, watermark) -> dict:
    return {
        "doc_key": doc_key,
        "doc_version": doc_version,
        "payload": payload,
        "payload_hash": to_wire(payload_hash),
        "watermark": watermark,
    }


def _decode_json(value):
    # JSONB comes back already decoded from psycopg; keep a bytes/str path for safety.
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return orjson.loads(bytes(value) if not isinstance(value, str) else value)
    return value


def get_document(topic: str, doc_key: str, owner: str, need: Need | None = None) -> dict:
    """The latest state of one document visible to ``owner``; ``document_not_found`` otherwise.
    With ``need`` a replica may answer (module docstring)."""
    row = _replica_then_primary(need, lambda alias: _read_document(alias, topic, doc_key, owner, need))
    if row is None:
        # Same answer for "absent" and "owned by someone else": existence must not leak.
        raise HydrationError("document_not_found", "no such document", http_status=404)
    doc_key, doc_version, payload, payload_hash, watermark = row
    return _document(doc_key, doc_version, _decode_json(payload), bytes(payload_hash), watermark)


def _read_document(alias: str, topic: str, doc_key: str, owner: str, need: Need | None):
    if alias == DEFAULT_DB_ALIAS:
        with connections[alias].cursor() as cur:
            cur.execute(
                "SELECT doc_key, doc_version, payload, payload_hash, watermark FROM sync_read_models "
                "WHERE topic = %s AND doc_key = %s AND (owner = %s OR public)",
                [topic, doc_key, owner],
            )
            return cur.fetchone()
    # A replica: the topic's head and the document in ONE statement (one snapshot).
    with connections[alias].cursor() as cur:
        cur.execute(
            "SELECT s.last_watermark, s.stream_epoch, d.doc_key, d.doc_version, d.payload, d.payload_hash, d.watermark "
            "FROM sync_topic_sequences s LEFT JOIN sync_read_models d "
            "ON d.topic = s.topic AND d.doc_key = %s AND (d.owner = %s OR d.public) WHERE s.topic = %s",
            [doc_key, owner, topic],
        )
        row = cur.fetchone()
    _require(alias, need, row[:2] if row is not None else None)
    return row[2:] if row[2] is not None else None


def encode_cursor(topic: str, stream_epoch: str, after_doc_key: str, first_head: int | None = None) -> str:
    """``first_head``: the head of the listing's first page; a replica may serve a later page only
    from a snapshot at least that new."""
    fields = {"v": CURSOR_VERSION, "t": topic, "e": stream_epoch, "k": after_doc_key}
    if first_head is not None:
        fields["h"] = first_head
    raw = orjson.dumps(fields)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def cursor_first_head(cursor: str) -> int | None:
    """The first page's head a (valid) cursor carries; None for cursors minted without it."""
    data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    head = data.get("h")
    return head if isinstance(head, int) and not isinstance(head, bool) and head >= 0 else None


def decode_cursor(cursor: str, topic: str) -> tuple[str, str]:
    """``(stream_epoch, after_doc_key)`` of an opaque cursor; ``invalid_cursor`` if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise HydrationError("invalid_cursor", "cursor is not a value returned by this API") from None
    if (
        not isinstance(data, dict)
        or data.get("v") != CURSOR_VERSION
        or not isinstance(data.get("e"), str)
        or not isinstance(data.get("k"), str)
        or not isinstance(data.get("t"), str)
    ):
        raise HydrationError("invalid_cursor", "cursor is not a value returned by this API")
    if data["t"] != topic:
        raise HydrationError("invalid_cursor", "cursor belongs to another topic")
    return data["e"], data["k"]


def _checked_head(topic: str, seq, cursor_epoch: str | None) -> tuple[int, str]:
    """``(head_watermark, stream_epoch)`` from the topic's sequence row read in the page's snapshot.

    No row: 404 ``unknown_topic``. A cursor minted under another ``stream_epoch``: 409
    ``stream_epoch_changed`` (see ``list_page``).
    """
    if seq is None:
        raise HydrationError("unknown_topic", f"unknown topic {topic!r}", http_status=404, topic=topic)
    head_watermark, stream_epoch = seq
    if cursor_epoch is not None and cursor_epoch != stream_epoch:
        raise HydrationError(
            "stream_epoch_changed",
            "the topic's stream epoch changed while paging; start again from the first page",
            http_status=409,
            stream_epoch=stream_epoch,
        )
    return head_watermark, stream_epoch


def _page(topic: str, rows: list, limit: int, head_watermark: int, stream_epoch: str, first_head: int | None = None) -> Page:
    """The page from ``limit + 1`` rows ordered by ``doc_key``: the extra row only says "there is more"."""
    more = len(rows) > limit
    rows = rows[:limit]
    documents = [_document(k, v, _decode_json(p), bytes(h), w) for k, v, p, h, w in rows]
    first_head = head_watermark if first_head is None else first_head
    next_cursor = encode_cursor(topic, stream_epoch, rows[-1][0], first_head) if more else None
    return Page(documents, head_watermark, stream_epoch, next_cursor)


def list_page(topic: str, owner: str, *, limit: int, cursor: str | None = None, need: Need | None = None) -> Page:
    """One page of the documents of ``topic`` visible to ``owner``, ordered by ``doc_key``.

    ``head_watermark``/``stream_epoch`` come from the same snapshot as the page (module doc).
    A cursor minted under another ``stream_epoch`` (the journal was reset or restored between
    two pages) answers 409 ``stream_epoch_changed``: the pages would not belong to one history,
    so the client starts again from the first page. A replica may serve the page when ``need``
    (what the client holds) or the cursor's first head says how new it must be (module doc).
    """
    cursor_epoch, after = decode_cursor(cursor, topic) if cursor else (None, None)
    if connection.in_atomic_block:
        # SET TRANSACTION must be the first statement of a transaction; inside an outer atomic
        # block the snapshot guarantee could not be given, so refuse instead of lying.
        raise RuntimeError("list_page must not run inside an outer transaction")
    if connection.vendor != "postgresql":  # the embedded SQLite of `make run`
        return _list_page_portable(topic, owner, limit, cursor_epoch, after)
    first_head = cursor_first_head(cursor) if cursor else None
    if cursor is not None:
        need = Need(first_head, cursor_epoch) if first_head is not None else None
    return _replica_then_primary(need, lambda alias: _list_page(alias, topic, owner, limit, cursor_epoch, after, need, first_head))


def _list_page(alias, topic, owner, limit, cursor_epoch, after, need, first_head) -> Page:
    with transaction.atomic(using=alias), connections[alias].cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute(
            "SELECT last_watermark, stream_epoch FROM sync_topic_sequences WHERE topic = %s", [topic]
        )
        seq = cur.fetchone()
        _require(alias, need, seq)
        head_watermark, stream_epoch = _checked_head(topic, seq, cursor_epoch)
        # Two index-ordered branches (own documents via (owner, topic, doc_key); public ones of
        # other owners) merged by doc_key, instead of one OR that cannot use the owner index.
        # LIMIT n+1 tells whether another page exists without a COUNT.
        after_sql = "" if after is None else " AND doc_key > %(after)s"
        cur.execute(
            "(SELECT doc_key, doc_version, payload, payload_hash, watermark FROM sync_read_models "
            " WHERE topic = %(topic)s AND owner = %(owner)s" + after_sql + " ORDER BY doc_key LIMIT %(n)s)"
            " UNION ALL "
            "(SELECT doc_key, doc_version, payload, payload_hash, watermark FROM sync_read_models "
            " WHERE topic = %(topic)s AND public AND owner <> %(owner)s" + after_sql + " ORDER BY doc_key LIMIT %(n)s)"
            " ORDER BY doc_key LIMIT %(n)s",
            {"topic": topic, "owner": owner, "after": after, "n": limit + 1},
        )
        rows = cur.fetchall()
    return _page(topic, rows, limit, head_watermark, stream_epoch, first_head)


def _list_page_portable(topic: str, owner: str, limit: int, cursor_epoch: str | None, after: str | None) -> Page:
    """``list_page`` through the ORM. One SQLite transaction is one snapshot (the database lock or,
    in WAL mode, the read snapshot lasts until COMMIT), so the head and the page still agree."""
    from django.db.models import Q

    from projector.models import ReadModelDocument, TopicSequence

    with transaction.atomic():
        seq = TopicSequence.objects.filter(topic=topic).values_list("last_watermark", "stream_epoch").first()
        head_watermark, stream_epoch = _checked_head(topic, seq, cursor_epoch)
        documents = ReadModelDocument.objects.filter(Q(owner=owner) | Q(public=True), topic=topic)
        if after is not None:
            documents = documents.filter(doc_key__gt=after)
        rows = list(
            documents.order_by("doc_key").values_list("doc_key", "doc_version", "payload", "payload_hash", "watermark")[
                : limit + 1
            ]
        )
    return _page(topic, rows, limit, head_watermark, stream_epoch)
