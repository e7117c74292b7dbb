"""``khala``: the command line of the Python client.

    khala token                      mint a sync token from an API token (prints it)
    khala tail TOPIC...              follow topics live: what changed per document (--json: JSON lines)
    khala snapshot TOPIC             every document of a topic over HTTP, as one JSON object
    khala status [TOPIC...]          connection state and, per topic, stored watermark vs head

Configuration: flags, else the environment: ``KHALA_URL`` (default http://127.0.0.1:8000),
``KHALA_API_TOKEN`` (the API token ``make run`` prints), ``KHALA_STATE_DIR`` (where ``tail``
keeps its SQLite cache and cursors; default ``$XDG_STATE_HOME/khala`` or ``~/.local/state/khala``).

Exit status: 0 ok, 1 the server refused or could not be reached (the message carries the stable
error code), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import urllib.parse
from pathlib import Path

from . import __version__, api_token_provider
from .changes import MISSING, changed_fields, format_change
from .client import BatchApplied, ErrorEvent, KhalaClient, Reconnecting, SnapshotLoaded, StaleCursor, State, StateChanged
from .errors import KhalaError
from .http import HttpApi
from .progress import ProgressBar
from .stores import MemoryStore, SQLiteStore

DEFAULT_URL = "http://127.0.0.1:8000"
PROGRESS_MIN_ROWS = 1000  # catch-ups shorter than this finish before a bar would help


class UsageError(Exception):
    pass


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "khala"


def state_path(state_dir: str | os.PathLike, url: str) -> Path:
    """One SQLite file per server, so two servers' cursors never mix."""
    netloc = urllib.parse.urlsplit(url).netloc or "default"
    return Path(state_dir) / (re.sub(r"[^A-Za-z0-9]+", "_", netloc).strip("_") + ".sqlite3")


def _api_token(args) -> str:
    token = args.api_token or os.environ.get("KHALA_API_TOKEN")
    if not token:
        raise UsageError("an API token is needed: pass --api-token or set KHALA_API_TOKEN (make run prints one)")
    return token


def _scopes(args, topics=()) -> list[str] | None:
    scopes = [s.strip() for s in (args.scopes or "").split(",") if s.strip()]
    return scopes or (list(topics) or None)


def _print_json(obj, out) -> None:
    out.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")
    out.flush()


# --- commands -------------------------------------------------------------------------------------


async def cmd_token(args, out, err) -> int:
    data = await HttpApi(args.url).mint_sync_token(_api_token(args), scopes=_scopes(args), ttl_seconds=args.ttl)
    if args.json:
        _print_json(data, out)
    else:
        out.write(data["token"] + "\n")
        err.write(f"expires in {data.get('expires_in')} s; scopes: {', '.join(data.get('scopes') or [])}\n")
    return 0


async def cmd_snapshot(args, out, err) -> int:
    http = HttpApi(args.url)
    token = (await http.mint_sync_token(_api_token(args), scopes=[args.topic]))["token"]
    bar = ProgressBar(err, 0, f"snapshot {args.topic}")
    snapshot = await http.snapshot(args.topic, token, limit=args.limit, on_page=lambda n: (setattr(bar, "total", n), bar.update(n)))
    bar.finish()
    _print_json(
        {
            "topic": snapshot.topic,
            "head_watermark": snapshot.head_watermark,
            "stream_epoch": snapshot.stream_epoch,
            "documents": snapshot.documents,
        },
        out,
    )
    err.write(f"{len(snapshot.documents)} documents at head_watermark {snapshot.head_watermark}\n")
    return 0


async def _heads(http: HttpApi, token: str, topics) -> dict[str, int]:
    heads = {}
    for topic in topics:
        page = await http.list_page(topic, token, limit=1)
        heads[topic] = page.head_watermark
    return heads


async def cmd_tail(args, out, err) -> int:
    topics = list(dict.fromkeys(args.topics))
    store = MemoryStore() if args.memory else SQLiteStore(state_path(args.state_dir, args.url))
    http = HttpApi(args.url)
    provider = api_token_provider(args.url, _api_token(args), scopes=_scopes(args, topics), http=http)
    if args.from_start:
        for topic in topics:
            store.clear_topic(topic)

    # How far behind are we? (for the progress bar; one tiny list request per topic)
    heads = await _heads(http, await provider(), topics)
    start = {t: store.topic_state(t).watermark for t in topics}
    total = sum(max(0, heads[t] - start[t]) for t in topics)
    bar = ProgressBar(err, total, "catching up") if total >= PROGRESS_MIN_ROWS and not args.json else None
    position = dict(start)
    # The previous payload of every document, to print what changed. Seeded from the store, so a
    # resumed tail diffs against what it showed last time; it holds what the cache holds.
    previous = {(t, key): doc.payload for t in topics for key, doc in store.documents(t).items()}

    def on_event(event):
        if isinstance(event, BatchApplied):
            position[event.topic] = max(position.get(event.topic, 0), event.result.watermark)
            if bar is not None and bar.enabled:
                bar.update(sum(max(0, min(position[t], heads[t]) - start[t]) for t in topics))
                if all(position[t] >= heads[t] for t in topics):
                    bar.finish()
            for doc in event.result.documents:
                if args.json:
                    _print_json({"type": "update", "topic": doc.topic, "doc_key": doc.doc_key, "doc_version": doc.doc_version,
                                 "watermark": doc.watermark, "payload": doc.payload, "hydration_required": doc.hydration_required}, out)
                elif not (bar is not None and bar.enabled and bar._drawn):
                    out.write(_describe_update(doc, previous.get((doc.topic, doc.doc_key), MISSING)))
                previous[(doc.topic, doc.doc_key)] = doc.payload
            if not args.json:
                out.flush()
        elif isinstance(event, ErrorEvent):
            if args.json:
                _print_json({"type": "error", "code": event.code, "message": event.message}, out)
            else:
                err.write(f"khala: {event.code}: {event.message}\n")
        elif isinstance(event, (SnapshotLoaded, StaleCursor)) and args.json:
            kind = "snapshot" if isinstance(event, SnapshotLoaded) else "stale_cursor"
            _print_json({"type": kind, **({"topic": event.topic, "documents": event.documents, "head_watermark": event.head_watermark}
                                           if isinstance(event, SnapshotLoaded) else {"topics": event.topics})}, out)
        elif isinstance(event, StateChanged) and not args.json:
            if bar is not None:
                bar.finish()
            err.write(f"[{event.state}]\n")
        elif isinstance(event, Reconnecting) and not args.json:
            err.write(f"reconnecting in {event.delay:.1f}s ({event.reason})\n")

    client = KhalaClient(args.url, provider, store, topics=topics, http=http, on_event=on_event,
                         connect_params={"client": "khala-cli", "client_build_id": _build_id()})
    try:
        if args.until_live:
            client.start()
            await client.wait_live()
            await client.close()
        else:
            await client.run()
    finally:
        if bar is not None:
            bar.finish()
        store.close()
    return 0


def _describe_update(doc, old_payload) -> str:
    """``topic key vN @watermark`` then one indented ``field: old → new`` line per changed field
    (``old_payload`` is ``MISSING`` for a document this tail has not seen before)."""
    head = f"{doc.topic} {doc.doc_key} v{doc.doc_version} @{doc.watermark}"
    if doc.hydration_required and doc.payload is None:
        return head + "  (payload not inline)\n"
    if old_payload is MISSING:
        head += "  (new)"
        changes = changed_fields(MISSING, doc.payload)
    else:
        changes = changed_fields(old_payload, doc.payload)
        if not changes:
            head += "  (no field changed)"
    return "\n".join([head] + ["  " + format_change(*change) for change in changes]) + "\n"


async def cmd_status(args, out, err) -> int:
    path = state_path(args.state_dir, args.url)
    store = SQLiteStore(path) if path.exists() else MemoryStore()
    stored = store.topics()
    topics = list(dict.fromkeys(args.topics or stored))
    http = HttpApi(args.url)
    if topics:
        provider = api_token_provider(args.url, _api_token(args), scopes=topics, http=http)
    else:  # nothing to subscribe to: any token the API token can mint shows whether the join works
        api_token = _api_token(args)

        async def provider():
            return (await http.mint_sync_token(api_token))["token"]
    report: dict = {"url": args.url, "state_file": str(path) if path.exists() else None, "topics": []}
    client = KhalaClient(args.url, provider, MemoryStore(), http=http, connect_params={"client": "khala-cli"})
    client.start()
    try:
        await client.wait_for_state(State.LIVE, timeout=args.timeout)
        report["connection"] = "live"
    except KhalaError as exc:
        report["connection"] = f"error: {exc.code}"
    except asyncio.TimeoutError:
        report["connection"] = f"no join within {args.timeout}s (state {client.state})"
    finally:
        await client.close()
    token = None
    for topic in topics:
        entry = {"topic": topic, "watermark": stored.get(topic).watermark if topic in stored else 0,
                 "stream_epoch": stored[topic].stream_epoch if topic in stored else None}
        try:
            token = token or await provider()
            page = await http.list_page(topic, token, limit=1)
            entry.update(head_watermark=page.head_watermark, lag=max(0, page.head_watermark - entry["watermark"]),
                         epoch_matches=(entry["stream_epoch"] in (None, page.stream_epoch)))
        except KhalaError as exc:
            entry["error"] = exc.code
        report["topics"].append(entry)
    store.close()
    if args.json:
        _print_json(report, out)
    else:
        out.write(f"server      {args.url}\nconnection  {report['connection']}\nstate file  {report['state_file'] or '(none)'}\n")
        for e in report["topics"]:
            if "error" in e:
                out.write(f"  {e['topic']}: watermark {e['watermark']}, head unavailable ({e['error']})\n")
            else:
                note = "" if e["epoch_matches"] else "  (stream epoch changed: next tail resyncs)"
                out.write(f"  {e['topic']}: watermark {e['watermark']} / head {e['head_watermark']} (lag {e['lag']}){note}\n")
    return 0 if report["connection"] == "live" else 1


def _build_id() -> str:
    return "khala-client-py-" + __version__


# --- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="khala", description="Khala sync client.")
    parser.add_argument("--version", action="version", version=f"khala {__version__}")
    parser.add_argument("--url", default=os.environ.get("KHALA_URL", DEFAULT_URL), help="server URL (env KHALA_URL)")
    parser.add_argument("--api-token", default=None, help="API token (env KHALA_API_TOKEN)")
    parser.add_argument("--state-dir", default=os.environ.get("KHALA_STATE_DIR") or str(default_state_dir()),
                        help="where tail keeps its cache and cursors (env KHALA_STATE_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("token", help="mint a sync token from the API token")
    p.add_argument("--scopes", help="comma-separated topics to request (default: the server's default scopes)")
    p.add_argument("--ttl", type=int, default=None, help="token lifetime in seconds (within the server's bounds)")
    p.add_argument("--json", action="store_true", help="print the whole token response as JSON")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("tail", help="follow topics live")
    p.add_argument("topics", nargs="+", metavar="TOPIC", help="topics such as runtime.run_summaries")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line with the full payload (default: the fields that changed)")
    p.add_argument("--memory", action="store_true", help="keep no state on disk (replays from the start each time)")
    p.add_argument("--from-start", action="store_true", help="drop the stored cache and cursors of these topics first")
    p.add_argument("--scopes", help="comma-separated token scopes (default: the topics)")
    p.add_argument("--until-live", action="store_true", help="exit once caught up instead of following")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("snapshot", help="all documents of a topic over HTTP, as JSON")
    p.add_argument("topic", metavar="TOPIC", help="topic such as runtime.run_summaries")
    p.add_argument("--limit", type=int, default=1000, help="page size (1..1000)")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("status", help="connection state and per-topic watermark vs head")
    p.add_argument("topics", nargs="*", metavar="TOPIC", help="topics to report (default: those in the state file)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the join")
    p.add_argument("--scopes", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(args.func(args, out, err))
    except UsageError as exc:
        err.write(f"khala: {exc}\n")
        return 2
    except KhalaError as exc:
        err.write(f"khala: error: {exc.code}: {exc.message}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
