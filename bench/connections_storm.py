"""Reconnect storm: N SDK clients on 2 daphne workers drop their sockets at once and rejoin through
the socket admission limits, while other sockets receive a live update stream. Run as
``bench/connections.py --storm`` (this module is its body).

    .venv/bin/python bench/connections.py --storm [--clients 5000] [--client-processes 2]
        [--source-ips 25] [--users 500] [--ip-limit 100] [--ip-window 5] [--timeout 600]
        [--background-sockets 100] [--update-rate 20] [--baseline-seconds 10] [--after-seconds 10]

Targets: the background sockets' p99 live latency stays < 250 ms during the storm; database
connections never exceed the pools' sum; every storm client is either admitted or told
``rate_limited`` with a retry hint. Each is printed as a PASS/FAIL line and stored in ``targets``.

Setup: two daphne workers sharing Postgres and Redis, with the socket admission limits on: the
per-IP connection rate set to ``--ip-limit`` per ``--ip-window`` s (100 per 5 s: a burst of 100,
then 20/s on average; the limiter is a fixed window shared through Redis), every other limit at its
default (``LIMIT_CONNECTS_PER_USER`` 20 per 10 s, ``LIMIT_SOCKETS_PER_USER`` 50, joins and
subscribes per socket). Clients are the Python SDK's ``KhalaClient`` (its real full-jitter
``Backoff``, seeded per client), spread over load-client processes, alternating between the two
workers, over ``--users`` users (a pre-minted token each: the token endpoint is not part of the
storm) and over ``--source-ips`` loopback source addresses (127.1.0.1, 127.1.0.2, …): the per-IP
limit is what is measured, so one address would stand for N clients behind one NAT.

Background sockets: ``--background-sockets`` sockets held by ``bench/fanout.py``'s load client in a
process of their own (so the storm's starved client processes cannot delay them), connected before
phase 1, half on each worker, over users of their own (10 sockets each, under the per-user limits)
and source addresses of their own (127.2.0.x, at most half the per-IP budget each), each subscribed
to a topic the storm's clients do not subscribe. After phase 1, ``harness.PacedWriter`` writes
``--update-rate`` updates/s to that topic through ``projector.sink.project`` (the real write path)
from a thread of this process, stamping each commit in ``on_commit`` (before the sink publishes
its hint); each socket records when each update first arrived. Latency = receive − commit, per
(socket, update), by the period of the update's commit: ``baseline`` (``--baseline-seconds`` before
the drop), ``storm`` (from the drop until the last storm client is live again), ``after``
(``--after-seconds`` more). Every socket must receive every update, in watermark order: missing
and out-of-order updates are counted and fail the target, never dropped from the figures.

Phase 1: every client connects, joins and subscribes one topic (through the same limits).
Phase 2, the storm: every client process aborts all its sockets at one instant (TCP reset, no
close frame, like a load balancer dropping them); each client goes through its normal reconnect
path (backoff, token, join, subscribe) until live again. The clients stay connected until the
"after" window is over (closing them would be a storm of its own).

Measured: per client, the time from the drop to live again (p50/p99/max) and what each failed
attempt was told: its error code and the ``retry_after_ms`` it carried (read from the frames
themselves, ``HintTap``: the SDK acts on the refusal's close code 4429 and does not surface the
``sync:error`` push that carries the hint); the servers' own count of refusals; database
connections of the benchmark database (``pg_stat_activity``, sampled every 0.25 s) from phase 1 to
the end, the workers' only (the sampler's and the writer's are named ``khala-bench-*`` and left
out), against the pools' sum (2 × ``DB_POOL_MAX_SIZE``); each worker's, the background client's and
the storm clients' CPU and run-queue wait per second from the drop (``CpuSampler``: a late update
with an idle worker is a wait on I/O, with a growing run-queue wait the machine's limit); load
average before, at the drop, at the storm's end and after. Writes ``bench/results/connections_storm.json`` (``--result-name``).
"""
from __future__ import annotations

import asyncio
import bisect
import math
import os
import random
import sys
import time
from pathlib import Path

import orjson

from bench import harness

RESULT_NAME = "connections_storm"


# --- client process ------------------------------------------------------------------------------


def retry_hint(text: str) -> int | None:
    """The ``retry_after_ms`` of a ``rate_limited`` refusal in one received frame, else None: a
    ``sync:error`` push (a refused connection attempt) or a join's error reply (``response``)."""
    try:
        frame = orjson.loads(text)
        payload = frame[4]
    except (orjson.JSONDecodeError, IndexError, TypeError):
        return None
    if isinstance(payload, dict) and isinstance(payload.get("response"), dict):
        payload = payload["response"]
    if not isinstance(payload, dict) or payload.get("code") != "rate_limited":
        return None
    hint = payload.get("retry_after_ms")
    return hint if isinstance(hint, int) and not isinstance(hint, bool) else None


class HintTap:
    """A client's WebSocket as the SDK sees it, reading along for the retry hint of a refusal.

    A refused connection attempt gets a ``sync:error`` ``rate_limited`` push carrying
    ``retry_after_ms`` on the ``phoenix`` topic, then close 4429; the SDK acts on the close code and
    does not surface the push, so the benchmark reads the frames here to know whether the client
    was told when to retry. ``attempt["hint"]`` is that attempt's hint (None: none seen)."""

    def __init__(self, ws, attempt: dict):
        self._ws = ws
        self._attempt = attempt

    def __getattr__(self, name):
        return getattr(self._ws, name)

    async def __aiter__(self):
        async for text in self._ws:
            if "retry_after_ms" in text:  # cheap test first: the load clients are CPU-starved
                hint = retry_hint(text)
                if hint is not None:
                    self._attempt["hint"] = hint
            yield text


async def client_main(args) -> None:
    import websockets

    from khala_client import ErrorEvent, KhalaClient, State

    urls = args.urls.split(",")
    tokens = orjson.loads(open(args.tokens_file, "rb").read())
    first, count = args.first_client, args.client_sockets
    clients: list[KhalaClient] = []
    drop = {"at": None}
    records: list[dict] = []
    events: list[asyncio.Event] = []

    for g in range(first, first + count):
        ip = f"127.1.{(g % args.source_ips) // 250}.{(g % args.source_ips) % 250 + 1}"
        token = tokens[g % len(tokens)]

        async def provide(token=token):
            return token

        attempt = {"hint": None}

        async def connect(url, attempt=attempt, ip=ip, **kwargs):
            attempt["hint"] = None  # one connection attempt starts here
            return HintTap(await websockets.connect(url, local_addr=(ip, 0), **kwargs), attempt)

        # attempts_after_drop: [code, retry_after_ms or None, the SDK's message when no hint] per
        # failed attempt; the first is the
        # drop itself (its reset socket), every later one what a reconnect attempt was told.
        record = {"ip": ip, "live_again": None, "refusals": {}, "initial_refusals": {}, "attempts_after_drop": []}
        rejoined = asyncio.Event()
        client = KhalaClient(
            urls[g % len(urls)], provide, topics=[args.topic], rng=random.Random(g).random,
            connect=connect, token_refresh=False,
            # thousands of clients share one starved event loop here: a late heartbeat reply is the
            # loop's lag, not a dead socket (the SDK default, 10 s, made phase 1 churn on a loaded box)
            heartbeat_timeout=args.heartbeat_timeout,
        )

        def on_event(event, record=record, rejoined=rejoined, attempt=attempt):
            if isinstance(event, ErrorEvent):
                bucket = record["refusals"] if drop["at"] is not None else record["initial_refusals"]
                bucket[event.code] = bucket.get(event.code, 0) + 1
                if drop["at"] is not None and record["live_again"] is None:
                    hint = event.details.get("retry_after_ms") if isinstance(event.details, dict) else None
                    hint = hint if isinstance(hint, int) else attempt["hint"]
                    # what the SDK said, for the attempts that carried no hint (why they did not)
                    record["attempts_after_drop"].append([event.code, hint, None if hint is not None else event.message[:160]])
            elif getattr(event, "state", None) == State.LIVE and drop["at"] is not None and record["live_again"] is None:
                record["live_again"] = time.time() - drop["at"]
                rejoined.set()

        client.on_event = on_event
        clients.append(client)
        records.append(record)
        events.append(rejoined)

    started = time.time()
    for client in clients:
        client.start()
    waiting = [asyncio.ensure_future(c.wait_live()) for c in clients]
    done, pending = await asyncio.wait(waiting, timeout=args.timeout)
    for task in pending:
        task.cancel()
    live = sum(1 for c in clients if c.state == State.LIVE)
    harness.report_ready(live, len(clients) - live)
    initial_seconds = time.time() - started

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # "STORM"
    drop["at"] = time.time()
    for client in clients:
        conn = client._conn
        if conn is not None:
            conn.ws.transport.abort()  # a reset, no close frame: every client reconnects at once
    waiting = [asyncio.ensure_future(e.wait()) for e in events]
    done, pending = await asyncio.wait(waiting, timeout=args.timeout)
    for task in pending:
        task.cancel()
    storm_seconds = time.time() - drop["at"]
    back = [r["live_again"] for r in records if r["live_again"] is not None]
    # The end of this process's storm (wall clock): its last client live again, or the deadline.
    # The clients stay connected until "CLOSE": closing thousands of sockets would be a storm of
    # its own inside the "after" window of the background sockets' latency.
    print(f"REJOINED {drop['at'] + (max(back) if back and len(back) == len(records) else storm_seconds):.6f}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "CLOSE"
    for client in clients:
        await client.close()
    harness.report_result(args.out, {
        "records": records, "initial_seconds": initial_seconds, "storm_seconds": storm_seconds, "dropped_at": drop["at"],
    })


# --- figures (pure functions of what the processes reported) -------------------------------------

PERIODS = ("baseline", "storm", "after")
TARGET_STORM_P99_MS = 250.0


def _summary(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"count": len(values), "p50_ms": round(harness.percentile(values, 50), 2),
            "p99_ms": round(harness.percentile(values, 99), 2), "max_ms": round(values[-1], 2)}


def live_latency_by_period(commits: dict[int, float], sockets: list[dict], drop_at: float, storm_end: float) -> dict:
    """Commit→receive latency (ms) of every (background socket, update), by the period of the
    update's commit: ``baseline`` before the drop, ``storm`` from the drop until the last storm
    client was live again, ``after`` later. ``commits``: watermark → commit time; ``sockets``: per
    socket, watermark (a string, as in JSON) → receive time. Undelivered updates are not latencies:
    ``delivery_gaps`` counts them."""
    values: dict[str, list[float]] = {period: [] for period in PERIODS}
    for received in sockets:
        for watermark, committed_at in commits.items():
            got = received.get(str(watermark))
            if got is None:
                continue
            period = "baseline" if committed_at < drop_at else ("storm" if committed_at <= storm_end else "after")
            values[period].append((got - committed_at) * 1000)
    return {period: _summary(v) for period, v in values.items()}


def live_latency_by_second(commits: dict[int, float], sockets: list[dict], drop_at: float) -> list[dict]:
    """The same latencies by whole second of commit time from the drop (negative: before it), to
    see when in the storm the background sockets were late: ``[{"second", "count", "p99_ms"}]``."""
    values: dict[int, list[float]] = {}
    for received in sockets:
        for watermark, committed_at in commits.items():
            got = received.get(str(watermark))
            if got is not None:
                values.setdefault(math.floor(committed_at - drop_at), []).append((got - committed_at) * 1000)
    return [{"second": second, "count": len(v), "p99_ms": round(harness.percentile(sorted(v), 99), 1)}
            for second, v in sorted(values.items())]


def delivery_gaps(commits: dict[int, float], sockets: list[dict]) -> dict:
    """Whether every background socket got every written update, in watermark order: per socket,
    the written watermarks it never received (``missing``) and the arrivals below one already
    received (``out_of_order``; the keys of ``received`` are in arrival order)."""
    written = set(commits)
    missing = out_of_order = with_gaps = 0
    examples = []
    for index, received in enumerate(sockets):
        arrived = [int(w) for w in received]
        lost = sorted(written.difference(arrived))
        backwards = sum(1 for a, b in zip(arrived, arrived[1:]) if b < a)
        missing += len(lost)
        out_of_order += backwards
        if lost or backwards:
            with_gaps += 1
            if len(examples) < 5:
                examples.append({"socket": index, "missing": lost[:10], "missing_count": len(lost), "out_of_order": backwards})
    return {"updates_written": len(written), "missing": missing, "out_of_order": out_of_order,
            "sockets_with_gaps": with_gaps, "examples": examples}


def storm_admission(records: list[dict]) -> dict:
    """What each storm client got after the drop. A client meets the target when it was admitted
    (live again) and every reconnect attempt that failed was told ``rate_limited`` with a
    ``retry_after_ms`` hint; a client never live again meets it only if its last attempt was such
    a refusal (it was still being told when to retry at the deadline)."""
    attempt_codes: dict[str, int] = {}
    unhinted_messages: dict[str, int] = {}  # the first few distinct messages of attempts without a hint
    told = without_hint = never = never_untold = admitted_first = admitted_after_hints = 0
    failing = 0
    for r in records:
        failed = r["attempts_after_drop"][1:]  # the first is the drop itself
        for code, hint, *message in failed:
            key = code if hint is not None else f"{code} (no retry hint)"
            attempt_codes[key] = attempt_codes.get(key, 0) + 1
            if hint is None and message and message[0] and (message[0] in unhinted_messages or len(unhinted_messages) < 10):
                unhinted_messages[message[0]] = unhinted_messages.get(message[0], 0) + 1
        unhinted = [code for code, hint, *_ in failed if hint is None]
        live = r["live_again"] is not None
        told += any(hint is not None for _, hint, *_ in failed)
        without_hint += bool(unhinted)
        if live:
            admitted_first += not failed
            admitted_after_hints += bool(failed) and not unhinted
        else:
            never += 1
            never_untold += not failed or failed[-1][1] is None
        failing += bool(unhinted) or (not live and (not failed or failed[-1][1] is None))
    return {
        "clients": len(records),
        "admitted_without_refusal": admitted_first,
        "admitted_after_rate_limited_with_hint": admitted_after_hints,
        "clients_told_rate_limited_with_hint": told,
        "clients_with_a_failed_attempt_without_hint": without_hint,
        "never_live_again": never,
        "never_live_again_without_a_last_hint": never_untold,
        "clients_missing_the_target": failing,
        "failed_attempts_by_code": attempt_codes,
        "failed_attempts_total": sum(attempt_codes.values()),
        "messages_of_attempts_without_hint": unhinted_messages,
    }


def targets(storm_latency: dict | None, gaps: dict | None, background: dict, db_peak: int, pools_sum: int, admission: dict) -> dict:
    """The benchmark's targets, each True/False (None: not measured, no background sockets)."""
    return {
        "background_live_p99_during_storm_under_250ms": (
            None if storm_latency is None else bool(storm_latency["count"]) and storm_latency["p99_ms"] < TARGET_STORM_P99_MS),
        "background_sockets_got_every_update_in_order": (
            None if gaps is None else background["sockets_subscribed"] == background["sockets_requested"]
            and not background["closed_early"] and gaps["missing"] == 0 and gaps["out_of_order"] == 0),
        "db_connections_within_pools_sum": db_peak <= pools_sum,
        "every_storm_client_admitted_or_told_rate_limited_with_retry_hint": admission["clients_missing_the_target"] == 0,
    }


def cpu_share_by_second(samples: list[tuple[float, dict]], drop_at: float) -> list[dict]:
    """Each process group's CPU (share of one core) per whole second from the drop, from
    ``samples`` of ``(wall time, {group: cumulative CPU seconds})`` taken a few times a second:
    whether the workers, the background load client or the storm's load clients were busy when the
    background sockets were late. A second without a sample at both ends is left out."""
    out = []
    if len(samples) < 2:
        return out
    times = [t for t, _ in samples]
    for second in range(math.floor(times[0] - drop_at), math.floor(times[-1] - drop_at) + 1):
        a = bisect.bisect_left(times, drop_at + second)
        b = bisect.bisect_left(times, drop_at + second + 1)
        if b >= len(samples) or b <= a:
            continue
        (ta, ca), (tb, cb) = samples[a], samples[b]
        out.append({"second": second, **{group: round((cb[group] - ca[group]) / (tb - ta), 2) for group in ca}})
    return out


def runqueue_wait_seconds(pid: int) -> float:
    """Time the process's main thread (the event loop's) spent runnable but waiting for a CPU
    (Linux ``/proc/<pid>/schedstat``, second field, ns)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


class CpuSampler:
    """``(wall time, {group: CPU seconds, group + "_runqueue": run-queue wait seconds})`` of groups
    of processes every ``interval`` s, in a thread. A loop that is late while its process uses
    little CPU is either waiting for a CPU (run-queue wait grows: the machine is the limit) or
    waiting on I/O (it does not)."""

    def __init__(self, groups: dict[str, list[int]], interval: float = 0.25):
        import threading

        self.groups = groups
        self.interval = interval
        self.samples: list[tuple[float, dict]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                cpu = {group: sum(harness.proc_cpu_seconds(pid) for pid in pids) for group, pids in self.groups.items()}
                cpu.update({f"{group}_runqueue": sum(runqueue_wait_seconds(pid) for pid in pids) for group, pids in self.groups.items()})
            except OSError:  # a process ended: the measured part is over
                return
            self.samples.append((time.time(), cpu))
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.ident is not None:  # started
            self.thread.join(timeout=5)


# --- orchestrator -------------------------------------------------------------------------------

BENCH_APPLICATION = "khala-bench"  # application_name prefix of the benchmark's own connections


def _users_and_tokens(prefix: str, n: int, topic: str) -> list[str]:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    names = [f"{prefix}{i}" for i in range(n)]
    existing = set(User.objects.filter(username__in=names).values_list("username", flat=True))
    User.objects.bulk_create([User(username=name) for name in names if name not in existing])
    users = {u.username: u for u in User.objects.filter(username__in=names)}
    from khala_project.conf import khala_setting

    ttl = int(khala_setting("TOKEN_TTL_MAX_SECONDS"))
    return [harness.mint(users[name], [topic], ttl_seconds=ttl) for name in names]


def _background_layout(sockets: int, ip_limit: int, per_user: int) -> tuple[int, list[str]]:
    """Users and source addresses of the background sockets: ``per_user`` sockets a user (under
    the per-user limits) and at most half the per-IP connect budget an address (127.2.0.1, …, apart
    from the storm's 127.1.x.x), so their own connects are never refused."""
    users = max(1, math.ceil(sockets / per_user))
    per_address = max(1, ip_limit // 2)
    addresses = [f"127.2.{k // 250}.{k % 250 + 1}" for k in range(max(1, math.ceil(sockets / per_address)))]
    return users, addresses


def _read_line(proc, expected: str) -> str:
    line = proc.stdout.readline()
    if not line.startswith(expected):
        raise RuntimeError(f"client process: expected {expected}, got {line!r}")
    return line


def validate(args) -> None:
    """Bad options get a clear error before anything starts."""
    for name in ("clients", "client_processes", "source_ips", "users", "ip_limit"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.client_nice <= 19:
        raise SystemExit(f"--client-nice must be 0..19, got {args.client_nice}")
    if args.background_sockets < 0:
        raise SystemExit(f"--background-sockets must be 0 or more, got {args.background_sockets}")
    for name in ("update_rate", "ip_window", "timeout", "heartbeat_timeout"):
        if not getattr(args, name) > 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("baseline_seconds", "after_seconds"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")


def run(args, script: str, argv) -> int:
    import subprocess
    import tempfile
    import threading

    from bench.connections import DbSampler

    validate(args)
    harness.raise_nofile(args.clients * 2 + args.background_sockets * 2 + 1024)
    env = harness.setup("connections_storm")
    from django.db import connection

    from khala_project.conf import DEFAULTS, khala_setting
    from projector.models import CODEX_WORKER_SUMMARIES, RUN_SUMMARIES

    # The storm's clients subscribe a quiet topic; the background sockets another one, which the
    # writer updates: only the background sockets receive the update stream.
    topic, background_topic = RUN_SUMMARIES, CODEX_WORKER_SUMMARIES
    harness.reset_topic(topic)
    harness.reset_topic(background_topic)
    with connection.cursor() as cur:
        cur.execute("SHOW max_connections")
        max_connections = int(cur.fetchone()[0])
    tokens = _users_and_tokens("storm", args.users, topic)
    limits = {name: DEFAULTS[name] for name in (
        "LIMIT_CONNECTS_PER_USER", "LIMIT_SOCKETS_PER_USER", "LIMIT_JOINS_PER_SOCKET", "LIMIT_SUBSCRIBES_PER_SOCKET")}
    limits["LIMIT_CONNECTS_PER_IP"] = [args.ip_limit, args.ip_window]
    per_user = max(1, min(limits["LIMIT_CONNECTS_PER_USER"][0], limits["LIMIT_SOCKETS_PER_USER"]) // 2)
    background_users, background_addresses = _background_layout(args.background_sockets, args.ip_limit, per_user)
    background_tokens = _users_and_tokens("stormbg", background_users, background_topic) if args.background_sockets else []
    connection.close()
    tokens_file = os.path.join(tempfile.mkdtemp(prefix="khala-storm-"), "tokens.json")
    with open(tokens_file, "wb") as f:
        f.write(orjson.dumps(tokens))

    pool = int(khala_setting("DB_POOL_MAX_SIZE"))
    workers, clients, background = [], [], []
    cpu = None
    writer, writer_thread, stop_writing = None, None, threading.Event()
    sampler = DbSampler(env["database_url"])
    sampler.start()
    load_before = os.getloadavg()
    try:
        for _ in range(2):
            workers.append(harness.start("daphne", env, khala=limits))
        urls = ",".join(w.http_url for w in workers)
        t_initial = time.monotonic()
        if args.background_sockets:
            # bench/fanout.py's load client, in a process of its own (not starved by the storm's
            # clients, not part of the drop): socket i on background_urls[i % len], so both workers
            # and every user get an equal share.
            background_urls = [w.ws_url(token=t) for t in background_tokens for w in workers]
            harness.start_clients(background, str(Path(__file__).with_name("fanout.py")), args.background_sockets, 1,
                                  "--urls", ",".join(background_urls), "--topic", background_topic,
                                  "--source-addresses", ",".join(background_addresses))
            background_ready = harness.wait_ready(background)[0]
            print(f"  background: {background_ready[0]}/{args.background_sockets} sockets subscribed to {background_topic} "
                  f"({background_ready[1]} failed) over 2 workers", flush=True)
        per = [args.clients // args.client_processes + (1 if i < args.clients % args.client_processes else 0)
               for i in range(args.client_processes)]
        firsts = [sum(per[:i]) for i in range(len(per))]
        # one process per slice; harness.start_clients gives equal slices, so start them here
        tmpdir = tempfile.mkdtemp(prefix="khala-storm-clients-")
        for i, (first, n) in enumerate(zip(firsts, per)):
            clients.append(subprocess.Popen(
                [sys.executable, script, "--storm", "--client", "--client-sockets", str(n), "--first-client", str(first),
                 "--urls", urls, "--tokens-file", tokens_file, "--topic", topic, "--source-ips", str(args.source_ips),
                 "--timeout", str(args.timeout), "--heartbeat-timeout", str(args.heartbeat_timeout), "--out", os.path.join(tmpdir, f"client{i}.json")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=harness.REPO_ROOT,
                # Lower priority than the servers: in a deployment the storm's clients are other
                # machines; on one box they would otherwise take the cores the workers serve from.
                preexec_fn=harness.lower_priority(args.client_nice) if args.client_nice else None,
            ))
        cpu = CpuSampler({"worker0": [workers[0].pid], "worker1": [workers[1].pid],
                          "background_client": [p.pid for p in background], "storm_clients": [p.pid for p in clients]})
        t_phase1 = time.monotonic()
        ready = harness.wait_ready(clients)
        initial_seconds = time.monotonic() - t_phase1
        live = sum(r[0] for r in ready)
        print(f"  phase 1: {live}/{args.clients} clients live in {initial_seconds:.1f} s", flush=True)
        if live < args.clients:
            print("  (phase 1 did not bring every client live; the storm still runs with those that are)", flush=True)
        if args.background_sockets:
            # The writer's own connection is named, so the pools' check counts the workers' only
            # (libpq reads PGAPPNAME; set only now that the workers, which must not inherit it, run).
            os.environ["PGAPPNAME"] = f"{BENCH_APPLICATION}-writer"
            writer = harness.PacedWriter(background_topic, args.update_rate, key_prefix="storm")

            def write() -> None:
                try:
                    writer.run(stopping=stop_writing)
                finally:
                    connection.close()  # this thread's connection

            writer_thread = threading.Thread(target=write, daemon=True)
            writer_thread.start()
        cpu.start()
        time.sleep(args.baseline_seconds)  # the baseline before the drop (not waiting for an event)
        admission_before = [harness.scrape_metrics(w.http_url, ("khala_admission_",)) for w in workers]
        t_storm = time.monotonic()
        load_at_storm = os.getloadavg()
        harness.tell_clients(clients, "STORM")
        storm_end = max(float(_read_line(proc, "REJOINED").split()[1]) for proc in clients)
        load_at_storm_end = os.getloadavg()
        print(f"  storm over: the last client was live again {time.time() - storm_end:.1f} s ago; "
              f"the \"after\" window runs {args.after_seconds:g} s from then", flush=True)
        time.sleep(max(0.0, storm_end + args.after_seconds - time.time()))  # the "after" window
        admission_after = [harness.scrape_metrics(w.http_url, ("khala_admission_",)) for w in workers]
        cpu.stop()
        if writer_thread is not None:
            stop_writing.set()
            writer_thread.join(timeout=60)
        t_end = time.monotonic()
        load_after = os.getloadavg()
        background_results = []
        if background:
            harness.tell_clients(background, f"MARK {max(writer.commits) if writer.commits else 0}")
            _read_line(background[0], "SEEN")
            harness.tell_clients(background, "DONE")
            background_results = harness.collect_results(background, timeout=60)
        harness.tell_clients(clients, "CLOSE")
        results = harness.collect_results(clients, timeout=args.timeout + 60)
    finally:
        stop_writing.set()
        if cpu is not None:
            cpu.stop()
        sampler.stop_event.set()
        sampler.join(timeout=5)
        harness.kill_clients(clients)
        harness.kill_clients(background)
        for w in workers:
            w.stop()

    records = [r for result in results for r in result["records"]]
    drop_at = min(result["dropped_at"] for result in results)
    rejoin = sorted(r["live_again"] for r in records if r["live_again"] is not None)
    codes: dict[str, int] = {}
    for r in records:
        for code, n in r["refusals"].items():
            codes[code] = codes.get(code, 0) + n
    admission = storm_admission(records)
    # The servers' own count of refusals in the storm (khala_admission_decisions, both workers).
    refused_by_server: dict[str, float] = {}
    for before, after in zip(admission_before, admission_after):
        for name, value in after.items():
            if 'outcome="limited"' in name:
                key = name.split("{", 1)[1].split("}")[0] if "{" in name else name
                refused_by_server[key] = refused_by_server.get(key, 0) + value - before.get(name, 0)
    initial_codes: dict[str, int] = {}
    for r in records:
        for code, n in r["initial_refusals"].items():
            initial_codes[code] = initial_codes.get(code, 0) + n
    # The workers' connections: everything but this benchmark's own (sampler, writer).
    db_peak, db_by_app = sampler.max_between(t_storm, t_end, exclude_prefix=BENCH_APPLICATION)
    db_peak_initial, db_by_app_initial = sampler.max_between(t_initial, t_storm, exclude_prefix=BENCH_APPLICATION)
    _, db_by_app_all = sampler.max_between(t_initial, t_end)

    latency = gaps = None
    background_data = {"sockets_requested": args.background_sockets}
    if background_results:
        received = [per_socket for res in background_results for per_socket in res["received"]]
        latency = live_latency_by_period(writer.commits, received, drop_at, storm_end)
        by_second = live_latency_by_second(writer.commits, received, drop_at)
        gaps = delivery_gaps(writer.commits, received)
        commit_times = sorted(writer.commits.values())
        background_data.update({
            "topic": background_topic,
            "sockets_subscribed": len(received),
            "connect_failures": sum(r["failed"] for r in background_results),
            "connect_failure_examples": [f for r in background_results for f in r["failures"]][:5],
            "closed_early": [c for r in background_results for c in r["closed_early"]],
            "users": background_users,
            "source_addresses": background_addresses,
            "update_rate_per_second": args.update_rate,
            "updates_written": len(writer.commits),
            "writer_late_slots": writer.late,
            "write_seconds": round(writer.seconds, 2),
            "period_seconds": {
                "baseline": round(drop_at - commit_times[0], 1) if commit_times else None,
                "storm": round(storm_end - drop_at, 1),
                "after": round(commit_times[-1] - storm_end, 1) if commit_times else None,
            },
            "live_latency": latency,
            "live_latency_p99_by_second_from_the_drop": by_second,
            "delivery": gaps,
            "client_cpu_seconds": [round(r["cpu_seconds"], 2) for r in background_results],
        })
    cpu_by_second = cpu_share_by_second(cpu.samples, drop_at)
    verdicts = targets(latency["storm"] if latency else None, gaps, background_data, db_peak, 2 * pool, admission)
    data = {
        "clients": args.clients,
        "workers": 2,
        "client_processes": args.client_processes,
        "client_nice": args.client_nice,
        "source_ips": args.source_ips,
        "users": args.users,
        "limits": limits,
        "postgres_max_connections": max_connections,
        "db_pool_max_size_per_worker": pool,
        "db_pools_sum": 2 * pool,
        "phase1_live": live,
        "phase1_seconds": round(initial_seconds, 1),
        "phase1_error_codes": initial_codes,
        "client_heartbeat_timeout_seconds": args.heartbeat_timeout,
        "db_connections_peak_phase1": db_peak_initial,
        "db_connections_peak_phase1_by_application": db_by_app_initial,
        "db_connections_peak_by_application_including_the_benchmarks_own": db_by_app_all,
        "storm": {
            "rejoined": len(rejoin),
            "never_rejoined": len(records) - len(rejoin),
            "rejoin_seconds_p50": round(harness.percentile(rejoin, 50), 2) if rejoin else None,
            "rejoin_seconds_p99": round(harness.percentile(rejoin, 99), 2) if rejoin else None,
            "rejoin_seconds_max": round(rejoin[-1], 2) if rejoin else None,
            "admission": admission,
            "error_codes_after_drop": codes,
            "server_refusals": refused_by_server,
            "server_refusals_total": sum(refused_by_server.values()),
            "admission_metrics_after": admission_after,
            "db_connections_peak": db_peak,
            "db_connections_peak_by_application": db_by_app,
            "seconds": round(storm_end - drop_at, 1),
        },
        "background": background_data,
        # per group: CPU used and time its main thread waited for a CPU, seconds per second
        "cpu_share_of_one_core_by_second_from_the_drop": cpu_by_second,
        "targets": verdicts,
        "loadavg_before": load_before,
        "loadavg_at_storm": load_at_storm,
        "loadavg_at_storm_end": load_at_storm_end,
        "loadavg_after": load_after,
    }
    s, a = data["storm"], admission
    print(f"  storm: {s['rejoined']}/{args.clients} rejoined; p50 {s['rejoin_seconds_p50']} s, p99 {s['rejoin_seconds_p99']} s, "
          f"max {s['rejoin_seconds_max']} s; {a['admitted_without_refusal']} admitted at once, "
          f"{a['admitted_after_rate_limited_with_hint']} after rate_limited with a retry hint, "
          f"{a['clients_with_a_failed_attempt_without_hint']} with a failed attempt without a hint; never rejoined {s['never_rejoined']}")
    print(f"  failed reconnect attempts by code {a['failed_attempts_by_code']} (total {a['failed_attempts_total']}); refusals counted by the "
          f"servers {refused_by_server} (total {sum(refused_by_server.values()):.0f})")
    if a["messages_of_attempts_without_hint"]:
        print(f"  what the SDK said on the attempts without a hint: {a['messages_of_attempts_without_hint']}")
    print(f"  db connections peak {db_peak} {db_by_app} vs pools' sum {2 * pool} (2 × DB_POOL_MAX_SIZE); "
          f"Postgres max_connections {max_connections}; phase 1 peak {db_peak_initial}")
    if latency:
        b = background_data
        print(f"  background: {b['sockets_subscribed']} sockets, {b['updates_written']} updates at {args.update_rate:g}/s "
              f"({b['writer_late_slots']} writes late); missing {gaps['missing']}, out of order {gaps['out_of_order']}, "
              f"sockets with gaps {gaps['sockets_with_gaps']}, closed early {len(b['closed_early'])}")
        for period in PERIODS:
            f = latency[period]
            print(f"  background live latency {period:8s} ({b['period_seconds'][period]} s): n {f['count']}, p50 {f['p50_ms']} ms, "
                  f"p99 {f['p99_ms']} ms, max {f['max_ms']} ms")
        storm_seconds = [row for row in by_second if 0 <= row["second"] <= storm_end - drop_at]
        print("  background p99 ms by second of the storm: " + " ".join(f"{row['p99_ms']:.0f}" for row in storm_seconds))
    first = [row for row in cpu_by_second if 0 <= row["second"] < 5]
    print("  CPU (cores) in the storm's first seconds, worker 0 / worker 1 / background client / storm clients: "
          + ", ".join(f"{row['worker0']}/{row['worker1']}/{row['background_client']}/{row['storm_clients']}" for row in first))
    print("  waiting for a CPU (s per s), same order: "
          + ", ".join(f"{row['worker0_runqueue']}/{row['worker1_runqueue']}/{row['background_client_runqueue']}/"
                      f"{row['storm_clients_runqueue']}" for row in first))
    print(f"  load average before {load_before}, at the storm {load_at_storm}, at its end {load_at_storm_end}, after {load_after}")
    for name, ok in verdicts.items():
        print(f"  {'n/a ' if ok is None else ('PASS' if ok else 'FAIL')}  {name}")
    path = harness.write_result(args.result_name or RESULT_NAME, data, argv, script="connections")
    print(f"wrote {path}")
    return 0


def add_options(parser) -> None:
    import argparse

    parser.add_argument("--storm", action="store_true", help="the reconnect-storm scenario (see bench/connections_storm.py)")
    parser.add_argument("--clients", type=int, default=5000, help="--storm: SDK clients in total, over 2 workers")
    parser.add_argument("--source-ips", type=int, default=25, help="--storm: loopback source addresses the clients spread over")
    parser.add_argument("--users", type=int, default=500, help="--storm: users the clients spread over (a token each)")
    parser.add_argument("--ip-limit", type=int, default=100, help="--storm: LIMIT_CONNECTS_PER_IP count")
    parser.add_argument("--ip-window", type=float, default=5.0, help="--storm: LIMIT_CONNECTS_PER_IP window (s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="--storm: deadline of each phase (s)")
    parser.add_argument("--heartbeat-timeout", type=float, default=60.0, help="--storm: the clients' heartbeat_timeout (s)")
    parser.add_argument("--background-sockets", type=int, default=100,
                        help="--storm: sockets connected before the storm, outside it, receiving the update stream (0: none)")
    parser.add_argument("--update-rate", type=float, default=20.0, help="--storm: updates/s written to the background sockets' topic")
    parser.add_argument("--baseline-seconds", type=float, default=10.0, help="--storm: seconds of updates before the drop")
    parser.add_argument("--after-seconds", type=float, default=10.0, help="--storm: seconds of updates after the last client is live again")
    parser.add_argument("--client-nice", type=int, default=10,
                        help="--storm: nice increment of the storm's client processes (0: same priority as the servers)")
    parser.add_argument("--first-client", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--tokens-file", help=argparse.SUPPRESS)
