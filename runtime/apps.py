from django.apps import AppConfig
from django.db.backends.signals import connection_created


def set_session_projection_intent(sender, connection, **kwargs):
    """Outside ``KHALA["RUNTIME_PROJECTION"] = "outbox"`` (the benchmarks' non-durable baselines,
    ``runtime.commands``), this process's PostgreSQL sessions tell the projection-intent trigger
    (migration ``0003_projection_intent_triggers``) to record nothing. Set per session, when it
    opens: the mode is a process-wide setting."""
    from khala_project.conf import khala_setting

    if connection.vendor == "postgresql" and khala_setting("RUNTIME_PROJECTION") != "outbox":
        with connection.cursor() as cursor:
            cursor.execute("SET khala.projection_intent = 'off'")


class RuntimeConfig(AppConfig):
    name = "runtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        connection_created.connect(set_session_projection_intent, dispatch_uid="khala-projection-intent")
