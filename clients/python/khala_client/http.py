"""The HTTP side of the protocol: sync-token minting and hydration (one document, snapshot pages).

``api_token_provider`` is the ``token_provider`` for scripts and services that hold an API token:
it asks for exactly the topics the client subscribes to (least privilege) and refuses, on the
client, a token that grants fewer.

Uses the standard library (``urllib``) in a worker thread, so the client has no HTTP dependency.
Every failure is a ``HttpError`` with the server's stable ``code`` (the body is
``{"error": {"code", "message", ...}}``) or a transport code (``http_unreachable``,
``bad_response``).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from .errors import FatalError, KhalaError
from .protocol import http_base

TOKEN_PATH = "/api/sync/token"
DOC_PATH = "/api/sync/v1/doc/"
LIST_PATH = "/api/sync/v1/list/"


class HttpError(KhalaError):
    """``retry_after``: seconds the server asked to wait (429 and 503 ``Retry-After``), else None."""

    def __init__(self, code: str, message: str = "", details: Any = None, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(code, message, details)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Page:
    documents: list[dict]
    head_watermark: int
    stream_epoch: str | None
    next_cursor: str | None


@dataclass(frozen=True)
class Snapshot:
    """All documents of a topic, to resume from ``head_watermark`` (the FIRST page's head)."""

    topic: str
    documents: list[dict]
    head_watermark: int
    stream_epoch: str | None


def _retry_after(header: str | None, err: Any) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is not used by Khala), else the body's
    ``retry_after``; None when neither is a positive number."""
    for value in (header, err.get("retry_after") if isinstance(err, dict) else None):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if seconds > 0 and seconds != float("inf"):
            return seconds
    return None


def _error_from_body(status: int, body: bytes, retry_after_header: str | None = None) -> HttpError:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    retry_after = _retry_after(retry_after_header, err)
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        return HttpError(err["code"], str(err.get("message", "")), err, status, retry_after)
    return HttpError(f"http_{status}", body[:200].decode("utf-8", "replace"), None, status, retry_after)


class HttpApi:
    def __init__(self, url: str, *, timeout: float = 15.0):
        self.base = http_base(url)
        self.timeout = timeout

    def _request_sync(self, method: str, path: str, headers: dict, body: bytes | None) -> Any:
        req = urllib.request.Request(self.base + path, data=body, method=method, headers={"Accept": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _error_from_body(exc.code, exc.read(), exc.headers.get("Retry-After") if exc.headers else None) from None
        except (urllib.error.URLError, OSError) as exc:
            raise HttpError("http_unreachable", f"{method} {path}: {exc}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise HttpError("bad_response", f"{method} {path}: response is not JSON") from None

    async def request(self, method: str, path: str, *, headers: dict | None = None, json_body: Any = None) -> Any:
        body = None
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        return await asyncio.to_thread(self._request_sync, method, path, headers, body)

    # --- tokens -----------------------------------------------------------------------------------

    async def mint_sync_token(
        self, api_token: str, *, scopes: list[str] | None = None, ttl_seconds: int | None = None, session_id: str | None = None
    ) -> dict:
        """``POST /api/sync/token`` with ``Authorization: Token <api token>``; returns the ``data`` object.

        ``session_id`` continues that session (a token for ``sync:refresh`` on an open socket);
        without it the server starts a new one."""
        body: dict[str, Any] = {}
        if scopes:
            body["scopes"] = list(scopes)
        if ttl_seconds is not None:
            body["ttl_seconds"] = int(ttl_seconds)
        if session_id is not None:
            body["session_id"] = session_id
        data = await self.request("POST", TOKEN_PATH, headers={"Authorization": f"Token {api_token}"}, json_body=body)
        data = data.get("data", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or not isinstance(data.get("token"), str):
            raise HttpError("bad_response", "token response has no token")
        return data

    # --- hydration --------------------------------------------------------------------------------

    async def get_document(self, topic: str, doc_key: str, token: str, *, min_watermark: int | None = None,
                           stream_epoch: str | None = None) -> dict:
        """``GET /api/sync/v1/doc/<topic>/<doc_key>`` → ``{doc_key, doc_version, payload, payload_hash, watermark}``.

        ``min_watermark`` and ``stream_epoch`` (together): the watermark of the update that pointed
        here and its epoch. They let the server answer from a read replica that has that write
        (never an older version of the document); without them it reads its primary."""
        path = DOC_PATH + urllib.parse.quote(topic, safe="") + "/" + urllib.parse.quote(doc_key, safe="/:")
        if min_watermark is not None and stream_epoch:
            path += "?" + urllib.parse.urlencode({"min_watermark": str(min_watermark), "stream_epoch": stream_epoch})
        data = await self.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        if not isinstance(data, dict) or "doc_version" not in data:
            raise HttpError("bad_response", "document response lacks doc_version")
        return data

    async def list_page(self, topic: str, token: str, *, cursor: str | None = None, limit: int | None = None) -> Page:
        query = {}
        if cursor:
            query["cursor"] = cursor
        if limit:
            query["limit"] = str(limit)
        path = LIST_PATH + urllib.parse.quote(topic, safe="") + ("?" + urllib.parse.urlencode(query) if query else "")
        data = await self.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        if not isinstance(data, dict):
            raise HttpError("bad_response", "list response is not an object")
        docs = next((data[k] for k in ("documents", "items", "docs") if isinstance(data.get(k), list)), None)
        head = data.get("head_watermark")
        if docs is None or not isinstance(head, int):
            raise HttpError("bad_response", "list response needs documents and head_watermark")
        return Page(docs, head, data.get("stream_epoch"), data.get("next_cursor"))

    async def snapshot(self, topic: str, token: str, *, limit: int | None = None, on_page=None, attempts: int = 3) -> Snapshot:
        """Every page of ``topic``. The resume point is the FIRST page's ``head_watermark``.

        Each page is its own consistent snapshot. A document written after the first page was
        read either shows up on a later page (newer version) or is replayed from the journal
        after the first page's head; resuming from a *later* page's head could skip a write to a
        document on an earlier page. If the stream epoch changes while paging (409
        ``stream_epoch_changed``), start again, at most ``attempts`` times.
        """
        for attempt in range(attempts):
            documents: list[dict] = []
            try:
                page = await self.list_page(topic, token, limit=limit)
                first = page
                documents.extend(page.documents)
                if on_page:
                    on_page(len(documents))
                while page.next_cursor:
                    page = await self.list_page(topic, token, cursor=page.next_cursor, limit=limit)
                    documents.extend(page.documents)
                    if on_page:
                        on_page(len(documents))
            except HttpError as exc:
                if exc.code == "stream_epoch_changed" and attempt + 1 < attempts:
                    continue
                raise
            return Snapshot(topic, documents, first.head_watermark, first.stream_epoch)
        raise HttpError("stream_epoch_changed", "stream epoch kept changing while paging")  # pragma: no cover


# --- token providers ------------------------------------------------------------------------------


def api_token_provider(url: str, api_token: str, *, scopes, http: HttpApi | None = None):
    """A ``token_provider`` that mints a fresh sync token from an API token on every call.

    Called with ``session_id`` (the client does so to refresh an open socket's token in band), it
    asks the token endpoint to continue that session.

    ``scopes`` are the topics the client subscribes to; pass the same list as ``topics=``. The
    server's default scope is some other topic, so a provider without scopes would yield a token
    the join refuses (``forbidden_topic``); hence they are required. Every minted token's granted
    ``scopes`` are checked: fewer than requested raises ``FatalError("scopes_not_granted")``, and a
    scope the server will not grant (``invalid_scope``) is fatal too, because asking again cannot
    change the answer.
    """
    requested = _requested_scopes(scopes)
    api = http or HttpApi(url)

    async def provide(session_id: str | None = None) -> str:
        try:
            data = await api.mint_sync_token(api_token, scopes=requested, session_id=session_id)
        except HttpError as exc:
            if exc.code == "invalid_scope":
                raise FatalError(exc.code, exc.message, exc.details) from None
            raise
        check_granted_scopes(requested, data.get("scopes"))
        return data["token"]

    return provide


def _requested_scopes(scopes) -> list[str]:
    if isinstance(scopes, str) or not scopes or not all(isinstance(s, str) and s.strip() for s in scopes):
        raise ValueError("scopes must be a non-empty list of topic names: the topics the client subscribes to")
    return list(dict.fromkeys(s.strip() for s in scopes))


def check_granted_scopes(requested, granted) -> None:
    """Raise ``FatalError("scopes_not_granted")`` unless ``granted`` covers every requested scope."""
    granted_set = set(granted) if isinstance(granted, list) else set()
    missing = [scope for scope in requested if scope not in granted_set]
    if missing:
        raise FatalError(
            "scopes_not_granted",
            f"requested scopes {', '.join(requested)} but the token grants "
            f"{', '.join(sorted(granted_set)) or 'none'}; missing: {', '.join(missing)}",
            {"requested": list(requested), "granted": sorted(granted_set), "missing": missing},
        )
