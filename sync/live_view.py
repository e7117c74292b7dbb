"""The web live view (``/live/``, KHALA-018): run and worker summaries, updating live.

One page, two lanes, chosen per user on every page load:

- **Khala lane** (``KHALA_WEB_SYNC_ENABLED`` on and the user in the cohort): the page's script
  mints a sync token with the browser session (``POST /api/sync/token``), and the JavaScript
  client (``clients/js``, served as static ES modules) bootstraps over HTTP, joins ``sync:v1``
  and applies live updates.
- **Legacy lane** (otherwise): the script polls ``GET /live/state.json`` every
  ``POLL_INTERVAL_MS``. Same documents (the read models of the signed-in user), so flipping the
  flag changes only how the page learns about changes.

The cohort (``WEB_SYNC_COHORT_PERCENT``) implements the rollout stages of
``docs/sync/RUNTIME_CODEX_CUTOVER_RUNBOOK.md``: staff are always in (stage A), other users are in
when a stable hash of their id falls under the percentage.

The page is server-rendered with the current state, so it is useful before any script runs.
"""

from __future__ import annotations

import hashlib

from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.db.models import Q
from django.http import JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from khala_project.conf import khala_setting
from projector.models import CODEX_WORKER_SUMMARIES, RUN_SUMMARIES, ReadModelDocument, TopicSequence

LIVE_TOPICS = (RUN_SUMMARIES, CODEX_WORKER_SUMMARIES)
POLL_INTERVAL_MS = 500  # the legacy lane must show a new run within a second
STATE_LIMIT_PER_TOPIC = 100


def in_cohort(user_id: int, percent: int) -> bool:
    """Stable per user: the same user stays in the same lane across reloads and workers."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    bucket = int.from_bytes(hashlib.sha256(f"web-sync:{user_id}".encode()).digest()[:8], "big") % 100
    return bucket < percent


def web_sync_enabled_for(user) -> bool:
    if not khala_setting("WEB_SYNC_ENABLED"):
        return False
    if user.is_staff:
        return True
    return in_cohort(user.pk, int(khala_setting("WEB_SYNC_COHORT_PERCENT")))


def owner_of(user) -> str:
    return f"user:{user.pk}"


def live_state(owner: str) -> dict:
    """The owner's run and worker summaries (newest first) and each topic's head and epoch.

    Not one snapshot: a head read a moment after the documents can only be newer, which at worst
    shows a watermark one poll ahead of the rows (the next poll catches the rows up).
    """
    out: dict = {"topics": {}, "documents": {}}
    for topic, head, epoch in TopicSequence.objects.filter(topic__in=LIVE_TOPICS).values_list(
        "topic", "last_watermark", "stream_epoch"
    ):
        out["topics"][topic] = {"head_watermark": head, "stream_epoch": epoch}
    for topic in LIVE_TOPICS:
        rows = (
            ReadModelDocument.objects.filter(Q(owner=owner) | Q(public=True), topic=topic)
            .order_by("-updated_at", "doc_key")
            .values_list("doc_key", "doc_version", "payload", "watermark")[:STATE_LIMIT_PER_TOPIC]
        )
        out["documents"][topic] = [{"doc_key": k, "doc_version": v, "payload": p, "watermark": w} for k, v, p, w in rows]
    return out


@login_required(login_url="live-login")
def live_page(request):
    use_ws = web_sync_enabled_for(request.user)
    get_token(request)  # sets the csrftoken cookie the script sends with POST /api/sync/token
    state = live_state(owner_of(request.user))
    config = {
        "lane": "khala" if use_ws else "polling",
        "topics": list(LIVE_TOPICS),
        "state_url": reverse("live-state"),
        "token_url": reverse("sync-token"),
        "socket_path": "/sync/socket/websocket",
        "list_url": "/api/sync/v1/list/",
        "doc_url": "/api/sync/v1/doc/",
        "poll_interval_ms": POLL_INTERVAL_MS,
        "owner": owner_of(request.user),
    }
    context = {
        "config": config,
        "lane": config["lane"],
        "runs": [d["payload"] for d in state["documents"][RUN_SUMMARIES]],
        "workers": [d["payload"] for d in state["documents"][CODEX_WORKER_SUMMARIES]],
        "topics": state["topics"],
    }
    response = render(request, "live/index.html", context)
    response["Cache-Control"] = "no-store"
    return response


class LiveLoginView(LoginView):
    """Session sign-in for any user (the admin's login form admits staff only)."""

    template_name = "live/login.html"
    next_page = "live"


@require_GET
def live_state_view(request):
    """``GET /live/state.json``: the legacy lane's poll (session auth; the signed-in user's documents)."""
    if not request.user.is_authenticated:
        return JsonResponse(
            {"error": {"code": "unauthenticated", "message": "sign in to see the live view"}}, status=401
        )
    state = live_state(owner_of(request.user))
    state["lane"] = "khala" if web_sync_enabled_for(request.user) else "polling"
    response = JsonResponse(state)
    response["Cache-Control"] = "no-store"
    return response
