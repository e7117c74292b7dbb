"""The stream journal becomes a partitioned table on PostgreSQL: LIST by topic, then RANGE by
watermark (layout and reasons: ``projector.journal_partitions``, docs/sync/SCHEMA.md).

This migration copies the rows in one transaction, which holds the journal exclusively while it
runs: right for an empty or small journal. A large journal takes the online path of
docs/sync/OPERATIONS.md ("Partitioning a live journal") before this migration, which then finds the
table already partitioned and only records itself.

What the database keeps of the Django model: the same columns, CHECK constraints, index names and
``(topic, watermark)`` unique constraint. The primary key becomes ``(id, topic, watermark)``: a key
of a partitioned table must hold the partition keys; ``id`` still leads it, so lookups by ``id``
(the admin) use it, and ``id`` comes from a plain sequence (identity columns cannot be declared on
a partitioned table before PostgreSQL 17). The model state does not change; on SQLite (the
embedded default of ``make run``) the journal stays a plain table and this migration does nothing.
"""

from django.db import migrations

COLUMNS = "id, topic, watermark, doc_key, doc_version, owner, public, payload, payload_hash, payload_bytes, inserted_at"

CREATE_ROOT = """
CREATE SEQUENCE sync_stream_events_id_seq;
CREATE TABLE sync_stream_events (
    id bigint NOT NULL DEFAULT nextval('sync_stream_events_id_seq'),
    topic varchar(160) NOT NULL,
    watermark bigint NOT NULL,
    doc_key varchar(255) NOT NULL,
    doc_version bigint NOT NULL,
    owner varchar(160) NOT NULL,
    public boolean NOT NULL DEFAULT false,
    payload jsonb NULL,
    payload_hash bytea NOT NULL,
    payload_bytes integer NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    CONSTRAINT sync_stream_events_watermark_gte_1 CHECK (watermark >= 1),
    CONSTRAINT sync_stream_events_doc_version_gte_0 CHECK (doc_version >= 0)
) PARTITION BY LIST (topic);
ALTER SEQUENCE sync_stream_events_id_seq OWNED BY sync_stream_events.id;
CREATE TABLE sync_stream_events_default PARTITION OF sync_stream_events DEFAULT;
"""

# Built after the rows are in: one index build per partition instead of index maintenance per row.
CREATE_KEYS_AND_INDEXES = """
ALTER TABLE sync_stream_events ADD CONSTRAINT sync_stream_events_pkey PRIMARY KEY (id, topic, watermark);
ALTER TABLE sync_stream_events ADD CONSTRAINT sync_stream_events_topic_watermark_uniq UNIQUE (topic, watermark);
CREATE INDEX sync_se_topic_owner_wm_idx ON sync_stream_events (topic, owner, watermark);
CREATE INDEX sync_se_topic_public_wm_idx ON sync_stream_events (topic, watermark) WHERE public;
CREATE INDEX sync_se_topic_doc_wm_idx ON sync_stream_events (topic, doc_key, watermark);
CREATE INDEX sync_se_topic_inserted_idx ON sync_stream_events (topic, inserted_at);
"""


def _relkind(cursor, name):
    cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [name])
    row = cursor.fetchone()
    return row and row[0]


def partition(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    from projector import journal_partitions

    with connection.cursor() as cursor:
        if _relkind(cursor, "sync_stream_events") == "p":  # done by the online path
            return
        cursor.execute("ALTER TABLE sync_stream_events RENAME TO sync_stream_events_unpartitioned")
        cursor.execute("SELECT coalesce(max(id), 0) FROM sync_stream_events_unpartitioned")
        (max_id,) = cursor.fetchone()
        # Frees the name sync_stream_events_id_seq (the identity's sequence goes with it).
        cursor.execute("ALTER TABLE sync_stream_events_unpartitioned ALTER COLUMN id DROP IDENTITY")
        cursor.execute(CREATE_ROOT)
        cursor.execute("SELECT topic FROM sync_topic_sequences ORDER BY topic")
        topics = [row[0] for row in cursor.fetchall()]
    for topic in topics:
        journal_partitions.ensure_topic(topic)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO sync_stream_events ({COLUMNS}) SELECT {COLUMNS} FROM sync_stream_events_unpartitioned "
            "ORDER BY topic, watermark"
        )
        cursor.execute("DROP TABLE sync_stream_events_unpartitioned")  # frees the index names
        cursor.execute(CREATE_KEYS_AND_INDEXES)
        if max_id:
            cursor.execute("SELECT setval('sync_stream_events_id_seq', %s)", [max_id])


def unpartition(apps, schema_editor):
    """Back to one plain table, rows and ids kept, built from the model state (same DDL as 0001)."""
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        if _relkind(cursor, "sync_stream_events") != "p":
            return
        cursor.execute(f"CREATE TEMP TABLE journal_rows ON COMMIT DROP AS SELECT {COLUMNS} FROM sync_stream_events")
        cursor.execute("DROP TABLE sync_stream_events CASCADE")  # every partition, the sequence
    schema_editor.create_model(apps.get_model("projector", "StreamEvent"))
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO sync_stream_events ({COLUMNS}) OVERRIDING SYSTEM VALUE SELECT {COLUMNS} FROM journal_rows")
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('sync_stream_events', 'id'), coalesce(max(id), 0) + 1, false) FROM sync_stream_events"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("projector", "0004_projection_outbox"),
    ]

    operations = [migrations.RunPython(partition, unpartition, elidable=False)]
