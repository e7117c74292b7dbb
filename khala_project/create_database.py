"""``python -m khala_project.create_database``: create ``DATABASE_URL``'s PostgreSQL database if it
is missing, so ``make run`` goes from an empty server to a running Khala in one command.

It connects to the server's ``postgres`` maintenance database with the same credentials. Every
failure (server unreachable, no CREATEDB privilege) prints one line saying what to do and exits
with status 1; it never prints a traceback. Without ``DATABASE_URL`` (the embedded SQLite default)
or with a non-PostgreSQL URL it does nothing.
"""

from __future__ import annotations

import os
import sys

import dj_database_url
import psycopg
from psycopg import sql

POSTGRES_ENGINES = {"django.db.backends.postgresql", "django.db.backends.postgresql_psycopg2"}


class DatabaseSetupError(Exception):
    """Why the database could not be created, phrased for the person running ``make run``."""


def ensure_database(database_url: str, *, maintenance_db: str = "postgres") -> bool:
    """Create the database named in ``database_url`` unless it exists; True when it was created."""
    db = dj_database_url.parse(database_url)
    if db["ENGINE"] not in POSTGRES_ENGINES:
        return False
    name = db["NAME"]
    where = f"{db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}"
    params = {"dbname": maintenance_db, "host": db.get("HOST") or None, "port": db.get("PORT") or None,
              "user": db.get("USER") or None, "password": db.get("PASSWORD") or None, "connect_timeout": 5}
    try:
        with psycopg.connect(**{k: v for k, v in params.items() if v is not None}, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    except psycopg.errors.InsufficientPrivilege:
        raise DatabaseSetupError(
            f"database {name!r} does not exist on {where} and user {db.get('USER') or '(default)'!r} may not create it: "
            f"ask an administrator to run `createdb {name}` (or grant CREATEDB), or unset DATABASE_URL to use "
            f"the embedded SQLite default"
        ) from None
    except psycopg.errors.DuplicateDatabase:  # created concurrently by someone else: fine
        return False
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseSetupError(
            f"cannot reach PostgreSQL at {where} to check database {name!r} ({first_line}); start PostgreSQL, "
            f"fix DATABASE_URL, or unset it to use the embedded SQLite default"
        ) from None


def main() -> int:
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        return 0
    try:
        created = ensure_database(url)
    except DatabaseSetupError as exc:
        print(f"khala: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # dj_database_url: unknown scheme
        print(f"khala: DATABASE_URL is not a database URL Khala understands: {exc}", file=sys.stderr)
        return 1
    if created:
        print(f"khala: created database {dj_database_url.parse(url)['NAME']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
