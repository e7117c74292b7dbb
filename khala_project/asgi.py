"""ASGI entry point: HTTP goes to Django, WebSocket to the sync routes.

Runs under daphne (``daphne khala_project.asgi:application``) and uvicorn
(``uvicorn khala_project.asgi:application``).
"""

import logging
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "khala_project.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from khala_project import daphne_accepts, daphne_close, daphne_handshake, daphne_writes, gc_tuning, heap_snapshots  # noqa: E402
from khala_project.conf import khala_setting  # noqa: E402
from khala_project.serve import SERVER_PROCESS_ENV  # noqa: E402
from khala_project.origins import BrowserOriginValidator  # noqa: E402
from projector.outbox_worker import start_in_process_drain  # noqa: E402
from sync.routing import websocket_urlpatterns  # noqa: E402

if settings.CHANNEL_LAYERS["default"]["BACKEND"].endswith("InMemoryChannelLayer"):
    logging.getLogger("khala").warning(
        "REDIS_URL is unset: using the in-memory channel layer, which serves ONE process only. "
        "Set REDIS_URL before running more than one worker."
    )

# Under daphne, Twisted's TCP transport sends at once when nothing is buffered instead of
# registering the socket with epoll for every frame (khala_project/daphne_writes.py). daphne loads
# this module before it listens, so every connection gets it. Its close handshake waits 10 s for
# the peer, as uvicorn's does (khala_project/daphne_close.py), so a client reading a backlog still
# receives the close code. autobahn's per-connection debug text is built only when logged
# (khala_project/daphne_handshake.py). Each loop turn accepts at most ACCEPTS_PER_LOOP_TURN new
# connections, so a reconnect storm waits in the listen queue rather than in front of the sockets
# already connected (khala_project/daphne_accepts.py).
if daphne_writes.running_under_daphne():
    daphne_writes.install()
    daphne_close.install()
    daphne_handshake.install()
    daphne_accepts.install(khala_setting("ACCEPTS_PER_LOOP_TURN"))

# In a server process started by khala_project.serve, the startup heap is frozen out of the
# collector's full passes and collection pauses are measured (khala_project/gc_tuning.py). Not in a
# test or a command that imports this module.
if os.environ.get(SERVER_PROCESS_ENV):
    gc_tuning.install(freeze=bool(khala_setting("GC_FREEZE_AT_STARTUP")))

# Only with KHALA_TRACEMALLOC_DIR set (bench/connections.py --tracemalloc): heap snapshots on SIGUSR2.
heap_snapshots.install_from_environment()

# The projection outbox drained inside this process (KHALA OUTBOX_IN_PROCESS_DRAIN; on by default
# only for the embedded SQLite database of `make run`, where no projector_worker runs): entries
# whose writer died after COMMIT are caught up without a second command.
start_in_process_drain()

# The admin's CSS/JS are served by the app itself (KHALA_SERVE_STATIC, default on), so a single
# daphne/uvicorn process is a complete deployment; put a CDN or proxy in front to offload them.
if os.environ.get("KHALA_SERVE_STATIC", "1").lower() in {"1", "true", "yes", "on"}:
    http_app = ASGIStaticFilesHandler(django_asgi_app)
else:
    http_app = django_asgi_app

application = ProtocolTypeRouter(
    {
        "http": http_app,
        # Browsers only from allowed origins (WEBSOCKET_ALLOWED_ORIGINS); no Origin = not a browser.
        "websocket": BrowserOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
