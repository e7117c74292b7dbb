"""Test driver for the JavaScript client's integration tests: a REAL Khala server for node --test.

Run by ``test/support/server.js`` with the repo's venv Python. It prepares its own database
(``<DATABASE_URL's name>_js_client``, created if missing, migrated, flushed), a user with an API
token, starts a daphne process through the shared harness (``tests/support/servers.py``), prints
one JSON line ``{"url", "api_token", "owner"}`` and then answers one JSON command per stdin line
(writes through the real sink, read-model queries, restarts) with one JSON line. EOF on stdin
stops the server.
"""

import json
import os
import sys
import traceback
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO))
os.chdir(REPO)

SIGNING_KEYS = "kjs1:khala-js-client-tests-signing-secret-0123456789"


def database_url() -> str:
    explicit = os.environ.get("KHALA_JS_DATABASE_URL")
    if explicit:
        return explicit
    base = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/khala")
    parts = urllib.parse.urlsplit(base)
    name = (parts.path.lstrip("/") or "khala") + "_js_client"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def ensure_database(url: str) -> None:
    import psycopg

    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urllib.parse.urlunsplit((parts.scheme.replace("postgres", "postgresql", 1) if parts.scheme == "postgres" else parts.scheme,
                                     parts.netloc, "/postgres", parts.query, ""))
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    url = database_url()
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = os.environ.get("KHALA_CHANNEL_PREFIX", "khala") + "_js"
    os.environ["KHALA_CHANNEL_PREFIX"] = prefix
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "khala_project.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db.models import Q
    from rest_framework.authtoken.models import Token

    from projector.models import ReadModelDocument, TopicSequence
    from projector.sink import DocumentWrite, project_many
    from projector.topics import bump_stream_epoch, ensure_v1_topics
    from tests.support.servers import start_server

    call_command("migrate", interactive=False, verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    ensure_v1_topics()
    user = get_user_model().objects.create_user(username="js-client", password="pw")
    api_token = Token.objects.create(user=user).key
    owner = f"user:{user.pk}"
    extra = json.loads(os.environ.get("KHALA_JS_SERVER_SETTINGS", "{}"))
    settings = {"SIGNING_KEYS": SIGNING_KEYS, "HEARTBEAT_INTERVAL_SECONDS": 1.0, **extra}

    def start(port=0):
        return start_server("daphne", database_url=url, redis_url=os.environ["REDIS_URL"], channel_prefix=prefix,
                            khala=settings, port=port)

    server = start()

    def handle(cmd):
        nonlocal server
        op = cmd["op"]
        if op == "write_many":
            writes = [DocumentWrite(w["topic"], w["doc_key"], w["doc_version"], w["payload"], w.get("owner", owner), w.get("public", False))
                      for w in cmd["writes"]]
            return [r.watermark for r in project_many(writes)]
        if op == "read_models":
            rows = ReadModelDocument.objects.filter(Q(owner=cmd.get("owner", owner)) | Q(public=True), topic=cmd["topic"])
            return {r.doc_key: [r.doc_version, r.payload] for r in rows}
        if op == "head":
            return TopicSequence.objects.get(topic=cmd["topic"]).last_watermark
        if op == "topic_policy":
            TopicSequence.objects.filter(topic=cmd["topic"]).update(**cmd["fields"])
            return True
        if op == "bump_epoch":
            return bump_stream_epoch(cmd["topic"])
        if op == "restart":
            port = server.port
            server.kill()
            server = start(port)
            return server.port
        raise ValueError(f"unknown op {op!r}")

    print(json.dumps({"url": server.http_url, "api_token": api_token, "owner": owner}), flush=True)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                reply = {"ok": True, "result": handle(json.loads(line))}
            except Exception as exc:  # report to the test instead of dying
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
            print(json.dumps(reply), flush=True)
    finally:
        server.stop()
        forget_keys(prefix)


def forget_keys(prefix: str) -> None:
    """Delete the server's Redis keys (limiter counters outlive it otherwise, for their window)."""
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


if __name__ == "__main__":
    main()
