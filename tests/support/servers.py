"""Start REAL daphne / uvicorn processes serving Khala, for multi-process tests and benchmarks.

API (stable; other suites and ``bench/`` use it)::

    from tests.support.servers import start_server, test_database_url

    server = start_server(
        "daphne",                      # or "uvicorn"
        database_url=test_database_url(),
        redis_url="redis://127.0.0.1:6379/0",
        channel_prefix="khala_d1",
        khala={"HEARTBEAT_INTERVAL_SECONDS": 1.0},   # -> KHALA_SETTINGS_JSON
        env={"KHALA_LOG_LEVEL": "WARNING"},          # extra environment
    )
    server.http_url                   # "http://127.0.0.1:PORT"
    server.ws_url(token="…")          # "ws://127.0.0.1:PORT/sync/socket/websocket?token=…&vsn=2.0.0"
    server.stop()                     # SIGTERM, then SIGKILL after a grace period
    server.kill()                     # SIGKILL at once (crash simulation)

The listening socket is bound by THIS process (port 0 unless ``port=`` is given) and handed to the
server with ``--fd``, so there is no race for a free port and the server is reachable the moment
``start_server`` returns: it waits until ``GET /healthz`` answers 200 (or raises ``ServerStartError``
with the tail of the server's log). Every process runs in its own session (process group) and is
registered for killing at interpreter exit, so a failing test cannot leak servers.

In pytest, prefer the ``asgi_server`` fixture (``tests/support/fixtures.py``): it fills in the test
database URL, Redis URL and channel prefix of the current run and stops every server it started.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SERVER_KINDS = ("daphne", "uvicorn")

_LIVE: set["ServerProcess"] = set()


class ServerStartError(RuntimeError):
    """The server process exited or did not answer /healthz in time; the message has its log tail."""


def test_database_url() -> str:
    """postgres URL of Django's *current* default database (pytest-django's ``test_…`` one in tests)."""
    from django.conf import settings
    from django.db import connections

    db = connections["default"].settings_dict if connections else settings.DATABASES["default"]
    user = urllib.parse.quote(db.get("USER") or "", safe="")
    password = urllib.parse.quote(db.get("PASSWORD") or "", safe="")
    auth = user + (f":{password}" if password else "")
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{db['NAME']}"


@dataclass(eq=False)
class ServerProcess:
    kind: str
    host: str
    port: int
    process: subprocess.Popen
    log_path: Path
    env: dict = field(repr=False)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ws_url(self, path: str = "/sync/socket/websocket", *, vsn: str | None = "2.0.0", **params) -> str:
        """WebSocket URL; ``params`` (e.g. ``token=``) go into the query string, None values skipped."""
        query = {k: v for k, v in params.items() if v is not None}
        if vsn is not None:
            query["vsn"] = vsn
        qs = urllib.parse.urlencode(query)
        return f"ws://{self.host}:{self.port}{path}" + (f"?{qs}" if qs else "")

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_bytes(self) -> int:
        """Resident set size of the server process (Linux /proc), for benchmarks."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_seconds: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it if it is still there after ``grace_seconds``."""
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=5)
        _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL at once (what a crash looks like to clients)."""
        self._signal(signal.SIGKILL)
        self.process.wait(timeout=5)
        _LIVE.discard(self)

    def _signal(self, sig) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, sig)  # own session: the group is exactly this server
        except ProcessLookupError:
            pass


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _command(kind: str, fd: int, extra_args, root: Path = REPO_ROOT) -> list[str]:
    # The documented entry (khala_project/serve.py), so tests prove the limits production runs with.
    if kind not in SERVER_KINDS:
        raise ValueError(f"unknown server kind {kind!r}; expected one of {SERVER_KINDS}")
    if not (Path(root) / "khala_project" / "serve.py").exists():
        return _command_before_the_entry(kind, fd, extra_args)
    server_args = ["--", "-v", "1", *extra_args] if kind == "daphne" else ["--", "--log-level", "warning", *extra_args]
    return [str(VENV_BIN / "python"), "-m", "khala_project.serve", "--server", kind, "--fd", str(fd), *server_args]


def _command_before_the_entry(kind: str, fd: int, extra_args) -> list[str]:
    """How revisions older than ``khala_project.serve`` were started (benchmarks compare them)."""
    app = "khala_project.asgi:application"
    if kind == "daphne":
        return [
            str(VENV_BIN / "daphne"), "--fd", str(fd), "-v", "1", "--access-log", "/dev/null",
            "--websocket-max-message-size", str(4 * 1024 * 1024), *extra_args, app,
        ]
    return [
        str(VENV_BIN / "uvicorn"), "--fd", str(fd), "--no-access-log", "--lifespan", "off",
        "--ws-per-message-deflate", "false", "--log-level", "warning", *extra_args, app,
    ]


# The socket admission limits (per IP, per user, per socket) are off in every server this harness
# starts, unless the caller's ``khala`` sets them: tests and benchmarks open hundreds of sockets per
# second from one address as a handful of users, which is exactly what the limits refuse.
# tests/admission turns each one on where it is the subject.
SOCKET_LIMITS_OFF = {
    "LIMIT_CONNECTS_PER_IP": None,
    "LIMIT_CONNECTS_PER_USER": None,
    "LIMIT_SOCKETS_PER_USER": None,
    "LIMIT_JOINS_PER_SOCKET": None,
    "LIMIT_SUBSCRIBES_PER_SOCKET": None,
}


def start_server(
    kind: str = "daphne",
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    channel_prefix: str | None = None,
    khala: dict | None = None,
    env: dict | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    extra_args: tuple | list = (),
    startup_timeout: float = 30.0,
    root: str | Path | None = None,
) -> ServerProcess:
    """Start one server process and wait for ``/healthz``. See the module docstring."""
    sock = _listening_socket(host, port)
    fd = sock.fileno()
    bound_port = sock.getsockname()[1]
    child_env = dict(os.environ)
    child_env["DJANGO_SETTINGS_MODULE"] = "khala_project.settings"
    # ``root``: the checkout to serve (default this one; benchmarks compare another revision).
    root = Path(root) if root is not None else REPO_ROOT
    child_env["PYTHONPATH"] = str(root) + os.pathsep + child_env.get("PYTHONPATH", "")
    child_env.setdefault("KHALA_LOG_LEVEL", "WARNING")
    if database_url is not None:
        child_env["DATABASE_URL"] = database_url
    if redis_url is not None:
        child_env["REDIS_URL"] = redis_url
    if channel_prefix is not None:
        child_env["KHALA_CHANNEL_PREFIX"] = channel_prefix
    child_env["KHALA_SETTINGS_JSON"] = json.dumps({**SOCKET_LIMITS_OFF, **(khala or {})})
    child_env.update(env or {})

    log_file = tempfile.NamedTemporaryFile(prefix=f"khala-{kind}-{bound_port}-", suffix=".log", delete=False)
    try:
        process = subprocess.Popen(
            _command(kind, fd, extra_args, root),
            cwd=root,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
            start_new_session=True,
        )
    finally:
        log_file.close()
        sock.close()  # the child holds its own copy of the listening socket
    server = ServerProcess(kind, host, bound_port, process, Path(log_file.name), child_env)
    _LIVE.add(server)
    try:
        _wait_healthy(server, startup_timeout)
    except BaseException:
        server.stop(grace_seconds=2)
        raise
    return server


def _wait_healthy(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerStartError(
                f"{server.kind} exited with {server.process.returncode} before answering /healthz:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(server.http_url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last_error = str(exc)
        time.sleep(0.1)  # polling a condition (process readiness), not waiting for an event
    raise ServerStartError(f"{server.kind} did not answer /healthz within {timeout}s ({last_error}):\n{server.log_tail()}")


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server._signal(signal.SIGKILL)
