"""Test fixture process for the Node suite: a real Khala server plus a tiny command channel.

Started by ``sync_channel.test.mjs`` as ``.venv/bin/python tests/phoenix_js/khala_fixture.py``.
It does what the Python suite's fixtures do, for a client that cannot import Django:

1. derives its own database from ``DATABASE_URL`` (same server, database ``KHALA_JS_DATABASE``,
   default ``khala_phoenix_js``), creates it if missing and migrates it;
2. uses its own channel prefix and a fresh random signing key;
3. starts a real daphne (or uvicorn: ``KHALA_JS_SERVER``) through ``tests.support.servers``;
4. mints a sync token for a test user with Khala's own issuer;
5. prints ONE JSON line ``{"ready": true, "http_url", "socket_url", "token", "org_id", "topic", ...}``;
6. then answers JSON commands, one per stdin line, with one JSON line each:
   ``{"op": "project", "doc_key", "doc_version", "payload", "owner"?, "public"?}`` writes through
   ``projector.sink.project`` and answers ``{"ok": true, "watermark", "payload_hash"}`` (the hash the
   journal stored for the row);
   ``{"op": "mint", "scopes": [...]}`` answers ``{"ok": true, "token"}``.

On stdin EOF (the Node process ended or closed the pipe) it stops the server and exits, so a
crashed test run cannot leave a daphne behind (``tests.support.servers`` also kills at exit).
"""

import json
import os
import secrets
import sys
import traceback
import urllib.parse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def derived_database_url(base_url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise SystemExit(f"DATABASE_URL must be a PostgreSQL URL, got scheme {parts.scheme!r}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def ensure_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))  # libpq takes postgres://
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def reply(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    base = os.environ.get("DATABASE_URL")
    if not base:
        raise SystemExit("DATABASE_URL is not set (make test-js exports it)")
    if not os.environ.get("REDIS_URL"):
        raise SystemExit("REDIS_URL is not set (make test-js exports it)")
    database_url = derived_database_url(base, os.environ.get("KHALA_JS_DATABASE", "khala_phoenix_js"))
    os.environ["DATABASE_URL"] = database_url
    os.environ["KHALA_CHANNEL_PREFIX"] = os.environ.get("KHALA_JS_CHANNEL_PREFIX", "khala_phoenix_js")
    os.environ["KHALA_SIGNING_KEYS"] = f"phoenix-js:{secrets.token_urlsafe(48)}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "khala_project.settings")
    sys.path.insert(0, str(REPO_ROOT))

    ensure_database(database_url)

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)

    from projector.models import RUN_SUMMARIES, StreamEvent
    from projector.payload_hash import to_wire
    from projector.sink import project
    from tests.support.servers import start_server
    from tokens.issuer import issue_token

    user, _ = get_user_model().objects.get_or_create(username="phoenix-js-interop")
    server = start_server(
        os.environ.get("KHALA_JS_SERVER", "daphne"),
        database_url=database_url,
        redis_url=settings.REDIS_URL,
        channel_prefix=settings.KHALA_CHANNEL_PREFIX,
    )
    try:
        issued = issue_token(user, scopes=[RUN_SUMMARIES])
        reply(
            {
                "ready": True,
                "server": server.kind,
                "http_url": server.http_url,
                "socket_url": f"ws://{server.host}:{server.port}/sync/socket",
                "token": issued.token,
                "org_id": issued.claims["oa_org_id"],
                "topic": RUN_SUMMARIES,
            }
        )
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                command = json.loads(line)
                if command["op"] == "project":
                    result = project(
                        command.get("topic", RUN_SUMMARIES),
                        command["doc_key"],
                        command["doc_version"],
                        command["payload"],
                        command.get("owner", issued.claims["oa_org_id"]),
                        public=command.get("public", False),
                    )
                    # The hash the journal stored for this row (what delivery sends), not one
                    # recomputed here: the JS side checks it against its own SHA-256.
                    stored = StreamEvent.objects.get(topic=command.get("topic", RUN_SUMMARIES), watermark=result.watermark).payload_hash
                    reply({"ok": True, "watermark": result.watermark, "payload_hash": to_wire(bytes(stored))})
                elif command["op"] == "mint":
                    token = issue_token(user, scopes=command.get("scopes", [RUN_SUMMARIES])).token
                    reply({"ok": True, "token": token})
                else:
                    reply({"ok": False, "error": f"unknown op {command['op']!r}"})
            except Exception as exc:  # report to the test instead of dying mid-run
                reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
    finally:
        server.stop()


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        if not isinstance(exc, SystemExit) or exc.code not in (0, None):
            reply({"ready": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
        raise
