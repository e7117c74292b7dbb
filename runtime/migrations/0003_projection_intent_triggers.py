"""PostgreSQL records the projection intent of every authority write itself, in the writing statement.

A row trigger on ``runtime_runs`` and ``runtime_codex_workers`` inserts the outbox entry
(``khala_projection_outbox``) whenever a run or a worker is created or changed: inside the same
statement, so inside the same transaction, as the change. Two things follow:

- no commit can exist without its projection intent, whoever wrote it (a command, the admin, a
  data fix in ``psql``), not only the writes that go through ``runtime.commands``;
- a command pays no round trip of its own for the intent: it sends three statements, not four
  (bench/README.md, "Durable projection", has what that saves in CPU: less than this machine's
  noise could show).

A session that sets ``khala.projection_intent = 'off'`` records nothing: only the benchmarks'
non-durable baselines do (``KHALA["RUNTIME_PROJECTION"]``, ``runtime.apps``). An UPDATE that
changes nothing records nothing either.

SQLite (the embedded default of ``make run``) has no such trigger: there ``runtime.commands``
records the intent through ``projector.outbox.record_change``.
"""

from django.db import migrations

FUNCTION = "khala_record_projection_intent"
TABLES = {"runtime_runs": "run", "runtime_codex_workers": "codex_worker"}

CREATE = f"""
CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('khala.projection_intent', true) = 'off' THEN
        RETURN NULL;
    END IF;
    INSERT INTO khala_projection_outbox (entity, entity_id, authority_seq, created_at, available_at, attempts, last_error)
    VALUES (TG_ARGV[0], NEW.id, NEW.latest_seq, statement_timestamp(), statement_timestamp(), 0, '');
    RETURN NULL;
END
$$;
""" + "".join(
    f"""
CREATE TRIGGER khala_projection_intent_insert AFTER INSERT ON {table}
    FOR EACH ROW EXECUTE FUNCTION {FUNCTION}('{entity}');
CREATE TRIGGER khala_projection_intent_update AFTER UPDATE ON {table}
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION {FUNCTION}('{entity}');
"""
    for table, entity in TABLES.items()
)

DROP = "".join(
    f"DROP TRIGGER IF EXISTS khala_projection_intent_insert ON {table};\n"
    f"DROP TRIGGER IF EXISTS khala_projection_intent_update ON {table};\n"
    for table in TABLES
) + f"DROP FUNCTION IF EXISTS {FUNCTION}();\n"


def _on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("runtime", "0002_event_created_at_from_command"),
        ("projector", "0004_projection_outbox"),
    ]

    operations = [migrations.RunPython(_on_postgresql(CREATE), _on_postgresql(DROP))]
