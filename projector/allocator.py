"""Per-topic watermark allocation (KHALA-007). This module allocates watermarks and nothing else.

The invariant everything downstream relies on
-------------------------------------------------
A watermark is allocated by updating the topic's ``sync_topic_sequences`` row **inside the
writer's own transaction**. The row lock is taken first, and held until that transaction commits
or rolls back. Two forms take it: ``SELECT … FOR UPDATE`` then ``UPDATE`` by the writes actually
made (both PostgreSQL paths of ``projector.sink``: the fused single-document statement and the
batch), and ``UPDATE … RETURNING`` of a whole block (``allocate()`` below, for a caller that
allocates in its own transaction). A second writer on the same topic
blocks on the lock and, once it gets it, reads the first writer's *committed* value. Therefore,
per topic:

- watermarks are unique and gap-free among committed rows (a rolled-back writer's values are
  re-allocated by the next writer, because its UPDATE is rolled back too), and
- **commit order equals watermark order**: when a row with watermark ``w`` becomes visible, every
  row with a smaller watermark on that topic is already visible.

So a reader that asks for ``watermark > cursor`` can never miss a row that commits later. A
Postgres SEQUENCE (``nextval``) would break this: it is not transactional, so ``w+1`` can commit
before ``w`` and a reader that already moved its cursor past ``w+1`` would skip ``w`` forever.
``max(watermark)+1`` breaks it too (two writers read the same max). Neither is used anywhere.

The price is that writers of one topic are serialised for the rest of their transaction, so
callers keep the transaction short: allocate as late as possible and commit right after.
"""

from dataclasses import dataclass

from django.db import connection as default_connection

from projector import metrics


class UnknownTopic(LookupError):
    """The topic has no ``sync_topic_sequences`` row. Topics are declared, not invented by typos."""

    code = "unknown_topic"

    def __init__(self, topic: str):
        super().__init__(f"unknown topic {topic!r}: declare it in sync_topic_sequences first")
        self.topic = topic


@dataclass(frozen=True, slots=True)
class Allocation:
    """A block of ``count`` watermarks: ``first .. last`` inclusive."""

    topic: str
    first: int
    last: int
    stream_epoch: str
    force_pointer_mode: bool

    @property
    def count(self) -> int:
        return self.last - self.first + 1


ALLOCATE_SQL = """
UPDATE sync_topic_sequences
   SET last_watermark = last_watermark + %s, updated_at = now()
 WHERE topic = %s
RETURNING last_watermark, stream_epoch, force_pointer_mode
"""


# The batch sink's first statement per topic (``projector.sink.project_many``): take the row lock
# with SELECT … FOR UPDATE and read the head, allocating nothing yet. The statement sent with it
# in the same query message advances ``last_watermark`` by the number of effective writes only, so
# no-op writes never consume a watermark. Once the lock is granted (READ COMMITTED) the row read is
# the latest committed one, and the next statement's snapshot contains every earlier writer of the
# topic. bench/sink.py measures this form beside ``UPDATE … RETURNING`` of the whole block (then
# giving the no-ops' watermarks back): the same cost (docs/adr/ADR-0004-design-card-departures.md).
LOCK_SEQUENCE_NAMED_SQL = """
SELECT last_watermark, stream_epoch, force_pointer_mode
  FROM sync_topic_sequences
 WHERE topic = %(topic)s
   FOR UPDATE
"""


def allocate(topic: str, count: int = 1, *, using=None) -> Allocation:
    """Allocate ``count`` consecutive watermarks on ``topic`` in the caller's transaction.

    Must be called inside ``transaction.atomic()``: outside one, autocommit would release the
    row lock immediately and the commit-order guarantee would be gone. Raises ``UnknownTopic``.
    """
    conn = using or default_connection
    if count < 1:
        raise ValueError("count must be >= 1")
    if not conn.in_atomic_block:
        raise RuntimeError("allocate() must run inside transaction.atomic(): the row lock must last until commit")
    with conn.cursor() as cursor:
        cursor.execute(ALLOCATE_SQL, [count, topic])
        row = cursor.fetchone()
    if row is None:
        metrics.ALLOCATOR_FAILURES.labels(reason="unknown_topic").inc()
        raise UnknownTopic(topic)
    last, stream_epoch, force_pointer_mode = row
    return Allocation(topic, last - count + 1, last, stream_epoch, force_pointer_mode)


# The single-document sink fuses allocation with the upsert and the journal insert into one
# statement (one round trip). These two CTE fragments are the allocation half of it and keep
# the same invariant: ``locked_sequence`` takes the row lock with SELECT … FOR UPDATE (held until
# commit) and, in READ COMMITTED, returns the latest committed row once the lock is granted;
# ``advanced_sequence`` then moves ``last_watermark`` to the watermark actually used. If the
# write turns out to be a no-op (an older doc_version), nothing joins ``advanced_sequence`` and no
# watermark is consumed, so committed watermarks stay gap-free.
LOCKED_SEQUENCE_CTE = """
locked_sequence AS (
    SELECT last_watermark + 1 AS watermark, stream_epoch, force_pointer_mode
      FROM sync_topic_sequences
     WHERE topic = %(topic)s
       FOR UPDATE
)"""

ADVANCED_SEQUENCE_CTE = """
advanced_sequence AS (
    UPDATE sync_topic_sequences AS s
       SET last_watermark = s.last_watermark + 1, updated_at = now()
      FROM {written} AS w
     WHERE s.topic = %(topic)s
    RETURNING s.last_watermark
)"""
