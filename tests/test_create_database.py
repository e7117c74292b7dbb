"""``make run``'s database step: create a missing PostgreSQL database, or say clearly why not."""

import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from khala_project.create_database import DatabaseSetupError, ensure_database
from tests.support.servers import REPO_ROOT

def _server_of(url: str) -> str:
    """``postgres://user@host:port`` of the suite's own database server (DATABASE_URL)."""
    return url.rsplit("/", 1)[0]


SERVER = _server_of(os.environ.get("DATABASE_URL") or "postgres://root@127.0.0.1:5432/khala")


@pytest.fixture
def fresh_name():
    name = f"khala_createdb_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def run_module(database_url):
    env = {**os.environ, "DATABASE_URL": database_url} if database_url else {
        k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "khala_project.create_database"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_creates_a_missing_database_once(fresh_name):
    first = run_module(f"{SERVER}/{fresh_name}")
    assert first.returncode == 0 and f"created database '{fresh_name}'" in first.stdout, first.stderr
    with psycopg.connect(f"{SERVER}/{fresh_name}") as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == fresh_name
    again = run_module(f"{SERVER}/{fresh_name}")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


def test_unreachable_server_is_one_clear_line_and_status_1(fresh_name):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_module(f"postgres://root@127.0.0.1:{port}/{fresh_name}")
    assert result.returncode == 1
    assert result.stderr.startswith(f"khala: cannot reach PostgreSQL at 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr and "unset it to use the embedded SQLite default" in result.stderr


def test_missing_privilege_says_who_must_create_it(fresh_name):
    role = f"khala_nocreate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    try:
        with pytest.raises(DatabaseSetupError, match=rf"may not create it: .*createdb {fresh_name}"):
            ensure_database(f"postgres://{role}@{SERVER.split('@')[-1]}/{fresh_name}")
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{role}"')


def test_embedded_default_and_non_postgres_urls_are_left_alone(tmp_path):
    assert run_module(None).returncode == 0
    assert ensure_database(f"sqlite:///{tmp_path}/x.sqlite3") is False
    bad = run_module("nosuchscheme://x/y")
    assert bad.returncode == 1 and "DATABASE_URL is not a database URL" in bad.stderr


def test_make_runs_the_database_step_before_migrate(fresh_name):
    env = {**os.environ, "DATABASE_URL": f"{SERVER}/{fresh_name}"}
    env.pop("MAKEFLAGS", None)
    made = subprocess.run(["make", "--no-print-directory", "database"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0 and f"created database '{fresh_name}'" in made.stdout, made.stdout + made.stderr
    plan = subprocess.run(["make", "--no-print-directory", "-n", "migrate"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60).stdout
    assert plan.index("khala_project.create_database") < plan.index("manage.py migrate"), plan
