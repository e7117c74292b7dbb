"""A PostgreSQL cluster and a Redis server of a test's own, on free ports, that it may stop, kill and
restart at will: outage tests never touch the shared servers the rest of the suite uses.

    with PostgresCluster() as pg, RedisServer() as redis:
        pg.create_database("khala")
        url = pg.url("khala")        # postgres://root@127.0.0.1:<port>/khala
        pg.stop(); pg.start()        # an outage and its end (the data directory is kept)
        redis.url                    # redis://127.0.0.1:<port>/0
        redis.stop(); redis.start()

PostgreSQL comes from the machine's own binaries (``initdb``/``pg_ctl`` of the newest installed
major version). initdb refuses to run as root, so as root the cluster belongs to the ``postgres``
system user and its commands run through ``runuser``. Durability settings are PostgreSQL's defaults
(``fsync`` and ``synchronous_commit`` on): outage tests prove what production would do.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bindir() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        found = shutil.which("initdb")
        if not found:
            raise RuntimeError("no PostgreSQL server binaries (initdb) on this machine")
        return Path(found).parent
    return versions[-1].parent


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)  # polling a server's readiness (a condition), not waiting for an event
    raise TimeoutError(f"{what} within {timeout}s")


class PostgresCluster:
    def __init__(self, *, port: int | None = None, settings: dict | None = None):
        self.port = port or free_port()
        self.bindir = postgres_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="khala-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.settings = {"listen_addresses": "127.0.0.1", "max_connections": "200", **(settings or {})}
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "root", "--auth=trust", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bindir / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgres://root@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.root} {options}", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown that disconnects clients; ``immediate``: like a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def sql(self, statement: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "root", "-d", database,
             "-v", "ON_ERROR_STOP=1", "-tAc", statement],
            capture_output=True, text=True, check=True, timeout=60,
        )
        return result.stdout.strip()

    def create_database(self, name: str) -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PostgresReplica(PostgresCluster):
    """A streaming hot-standby replica of ``primary`` on its own port: ``pg_basebackup -R`` copies
    the primary's data directory and writes the standby configuration (primary_conninfo and
    standby.signal), so it starts streaming at once. Replay can be paused and resumed on it
    (``pause_replay``/``resume_replay``) to force lag while the primary goes on committing."""

    def __init__(self, primary: PostgresCluster, *, port: int | None = None, settings: dict | None = None):
        # No initdb: the data directory is the primary's base backup.
        self.port = port or free_port()
        self.bindir = primary.bindir
        self.root = Path(tempfile.mkdtemp(prefix="khala-pg-replica-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.settings = {"listen_addresses": "127.0.0.1", "max_connections": "200", "hot_standby": "on", **(settings or {})}
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "root", "-D", str(self.data),
                  "-R", "-X", "stream", "--no-sync", "-c", "fast")

    def replay_lsn(self) -> int:
        return int(self.sql("SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"))

    def pause_replay(self) -> None:
        self.sql("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.sql("SELECT pg_wal_replay_resume()")

    def wait_replayed(self, primary: PostgresCluster, timeout: float = 30.0) -> None:
        """Until the replica has replayed everything the primary has written so far."""
        target = int(primary.sql("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"))
        wait_for(lambda: self.replay_lsn() >= target, timeout, "the replica did not catch up")


class RedisServer:
    def __init__(self, *, port: int | None = None):
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        wait_for(self._answers, 20, f"redis-server on port {self.port} did not answer")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()  # what an outage looks like: no goodbye to the clients
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "RedisServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
