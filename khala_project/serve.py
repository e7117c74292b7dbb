"""The one way to start a Khala server process: ``python -m khala_project.serve``.

``make serve``, ``make serve-uvicorn``, the Dockerfile, docker-compose.yml and the test and benchmark
harness (``tests/support/servers.py``) all start Khala through this module, so the protocol's
documented limits hold whichever ASGI server runs it and however it was started:

- **Inbound frames.** Khala itself parses a text frame only up to ``MAX_FRAME_BYTES`` (1 MiB) and
  answers a larger one with ``sync:error`` ``payload_too_large`` and close code 4413
  (``sync.protocol.decode_frame``). For Khala to see such a frame at all, the server must accept it:
  daphne's own default (1 MiB per frame) would drop a 1–4 MiB frame with 1009/1006 before Khala saw
  it. So both servers accept up to ``TRANSPORT_MAX_MESSAGE_BYTES`` (16 MiB, uvicorn's own default);
  only beyond that does the server itself close with 1009 (message too big).
- **Outbound frames.** autobahn (daphne) applies its message limit to what the server sends too;
  a replay batch is up to ``REPLAY_BATCH_MAX_BYTES`` (2 MiB), so the same ceiling covers it.
- **uvicorn**: per-message deflate off (Khala's frames are small JSON; compressing each costs more
  CPU than it saves on a LAN), no access log, no lifespan (Khala has no startup hooks).
- **daphne's writes**: Twisted's TCP transport registers the socket with epoll for every frame
  it sends and unregisters it once sent (~half of daphne's CPU per delivered frame). The ASGI app
  module, which daphne loads before it listens, replaces that transport with one that sends at
  once when nothing is buffered (``khala_project.daphne_writes``), so this holds however daphne
  is started; no flag is needed here.
- **daphne's accepts**: at most ``ACCEPTS_PER_LOOP_TURN`` new connections per event-loop turn
  (``khala_project.daphne_accepts``, also installed by the app module); the rest wait in the listen
  queue, which this module makes 2,048 deep (``-e tcp:…:backlog=2048``, uvicorn's figure) instead of
  the 50 daphne's ``-b``/``-p`` would give.
- **Both**: Khala writes ready-made WebSocket frames to the server's transport itself, one write
  per socket per loop turn (``sync.socket_flush``), which needs per-message deflate off (a
  negotiated extension makes a socket fall back to one ``send`` per frame).

This module reads only Khala's settings (no app registry), then replaces itself with the server
(``os.execv``): no extra process, and signals go straight to the server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

SERVERS = ("daphne", "uvicorn")
# Set in the server's environment by ``main``: the app module then knows it serves (not a test or
# a management command importing it) and tunes the process for that (``khala_project.gc_tuning``).
SERVER_PROCESS_ENV = "KHALA_SERVER_PROCESS"
APPLICATION = "khala_project.asgi:application"


def transport_limit_bytes() -> int:
    """The largest WebSocket message the server accepts or sends; checked against Khala's limits."""
    from khala_project.conf import khala_setting

    ceiling = int(khala_setting("TRANSPORT_MAX_MESSAGE_BYTES"))
    needed = {
        "MAX_FRAME_BYTES": int(khala_setting("MAX_FRAME_BYTES")),
        "REPLAY_BATCH_MAX_BYTES": int(khala_setting("REPLAY_BATCH_MAX_BYTES")),
    }
    for name, value in needed.items():
        # Strictly above: a frame just over MAX_FRAME_BYTES must still reach Khala to be answered
        # with 4413, and a full replay batch carries its JSON envelope on top of its updates.
        if ceiling <= value:
            raise SystemExit(
                f"khala serve: TRANSPORT_MAX_MESSAGE_BYTES ({ceiling}) must be above {name} ({value}); "
                "raise it in KHALA_SETTINGS_JSON or lower the other limit"
            )
    return ceiling


def server_argv(server: str, *, host: str, port: int | None, fd: int | None, proxy_headers: bool, extra: list[str]) -> list[str]:
    """The argv that starts ``server`` with Khala's limits (``argv[0]`` is the executable's path)."""
    limit = str(transport_limit_bytes())
    executable = _executable(server)
    if server == "daphne":
        argv = [executable, "--websocket-max-message-size", limit, "--websocket-max-frame-size", limit]
        argv += ["--fd", str(fd)] if fd is not None else ["-e", daphne_endpoint(host, port)]
        if proxy_headers:
            argv.append("--proxy-headers")
        return argv + ["--access-log", os.devnull, *extra, APPLICATION]
    if server == "uvicorn":
        argv = [executable, "--ws-max-size", limit, "--ws-per-message-deflate", "false", "--lifespan", "off"]
        argv += ["--no-access-log"]
        argv += ["--fd", str(fd)] if fd is not None else ["--host", host, "--port", str(port)]
        argv += ["--proxy-headers", "--forwarded-allow-ips", "*"] if proxy_headers else ["--no-proxy-headers"]
        return argv + [*extra, APPLICATION]
    raise SystemExit(f"khala serve: unknown server {server!r}; expected one of {', '.join(SERVERS)}")


def daphne_endpoint(host: str, port: int) -> str:
    """daphne's ``-b``/``-p`` as a Twisted endpoint, with the listen backlog uvicorn uses instead of
    Twisted's 50: daphne accepts a few connections per loop turn (``khala_project.daphne_accepts``)
    and the listen queue holds a reconnect storm's rest meanwhile."""
    from khala_project.daphne_accepts import LISTEN_BACKLOG

    interface = host.strip("[]").replace(":", r"\:")
    return f"tcp:port={int(port)}:interface={interface}:backlog={LISTEN_BACKLOG}"


def _executable(server: str) -> str:
    # The console script installed next to this interpreter (the project's venv), else on PATH.
    beside = Path(sys.executable).with_name(server)
    if beside.exists():
        return str(beside)
    found = shutil.which(server)
    if not found:
        raise SystemExit(f"khala serve: {server} is not installed (pip install -r requirements/base.txt)")
    return found


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m khala_project.serve",
        description="Start a Khala server process (daphne or uvicorn) with the protocol's limits.",
        epilog="Arguments after `--` go to the server unchanged (e.g. `-- --verbosity 2`).",
    )
    parser.add_argument("--server", choices=SERVERS, default=os.environ.get("KHALA_SERVER", "daphne"),
                        help="the ASGI server (default: $KHALA_SERVER or daphne)")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="bind address (default: $HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")), help="port (default: $PORT or 8000)")
    parser.add_argument("--fd", type=int, help="serve an already-bound listening socket (file descriptor) instead of --host/--port")
    parser.add_argument("--proxy-headers", action="store_true",
                        help="trust X-Forwarded-For/-Proto from the balancer in front (docker-compose, HAProxy)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.extra and args.extra[0] == "--":
        args.extra = args.extra[1:]
    return args


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "khala_project.settings")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = server_argv(args.server, host=args.host, port=args.port, fd=args.fd, proxy_headers=args.proxy_headers, extra=args.extra)
    # Tells the app module it runs in a long-lived server process (``khala_project.gc_tuning``).
    os.environ[SERVER_PROCESS_ENV] = args.server
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
