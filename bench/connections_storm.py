"""Reconnect storm: N SDK clients on 2 daphne workers drop their sockets at once and rejoin through
the socket admission limits. Run as ``bench/connections.py --storm`` (this module is its body).

    .venv/bin/python bench/connections.py --storm [--clients 5000] [--client-processes 2]
        [--source-ips 25] [--users 500] [--ip-limit 100] [--ip-window 5] [--timeout 600]

Setup: two daphne workers sharing Postgres and Redis, with the socket admission limits on: the
per-IP connection rate set to ``--ip-limit`` per ``--ip-window`` s (100 per 5 s: a burst of 100,
then 20/s on average; the limiter is a fixed window shared through Redis), every other limit at its
default (``LIMIT_CONNECTS_PER_USER`` 20 per 10 s, ``LIMIT_SOCKETS_PER_USER`` 50, joins and
subscribes per socket). Clients are the Python SDK's ``KhalaClient`` (its real full-jitter
``Backoff``, seeded per client), spread over load-client processes, alternating between the two
workers, over ``--users`` users (a pre-minted token each: the token endpoint is not part of the
storm) and over ``--source-ips`` loopback source addresses (127.1.0.1, 127.1.0.2, …): the per-IP
limit is what is measured, so one address would stand for N clients behind one NAT.

Phase 1: every client connects, joins and subscribes one topic (through the same limits).
Phase 2, the storm: every client process aborts all its sockets at one instant (TCP reset, no
close frame, like a load balancer dropping them); each client goes through its normal reconnect
path (backoff, token, join, subscribe) until live again.

Measured: per client, the time from the drop to live again (p50/p99/max) and what each failed
attempt was told (``rate_limited`` by close 4429 or a join reply, or anything else: the target is
nothing else); database connections of the benchmark database (``pg_stat_activity``, sampled every
0.25 s) during the storm, against the pools' sum (2 × ``DB_POOL_MAX_SIZE``); load average.
Writes ``bench/results/connections_storm.json``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import sys
import time

import orjson

from bench import harness

RESULT_NAME = "connections_storm"


# --- client process ------------------------------------------------------------------------------


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

        record = {"ip": ip, "live_again": None, "refusals": {}, "initial_refusals": {}, "codes_after_drop": []}
        rejoined = asyncio.Event()
        client = KhalaClient(
            urls[g % len(urls)], provide, topics=[args.topic], rng=random.Random(g).random,
            connect=functools.partial(websockets.connect, local_addr=(ip, 0)), token_refresh=False,
            # thousands of clients share one starved event loop here: a late heartbeat reply is the
            # loop's lag, not a dead socket (the SDK default, 10 s, made phase 1 churn on a loaded box)
            heartbeat_timeout=args.heartbeat_timeout,
        )

        def on_event(event, record=record, rejoined=rejoined):
            if isinstance(event, ErrorEvent):
                bucket = record["refusals"] if drop["at"] is not None else record["initial_refusals"]
                bucket[event.code] = bucket.get(event.code, 0) + 1
                if drop["at"] is not None and record["live_again"] is None:
                    record["codes_after_drop"].append(event.code)
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
    await asyncio.wait(waiting, timeout=args.timeout)
    storm_seconds = time.time() - drop["at"]
    for client in clients:
        await client.close()
    harness.report_result(args.out, {
        "records": records, "initial_seconds": initial_seconds, "storm_seconds": storm_seconds, "dropped_at": drop["at"],
    })


# --- orchestrator -------------------------------------------------------------------------------


def _users_and_tokens(n: int, topic: str) -> list[str]:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    names = [f"storm{i}" for i in range(n)]
    existing = set(User.objects.filter(username__in=names).values_list("username", flat=True))
    User.objects.bulk_create([User(username=name) for name in names if name not in existing])
    users = {u.username: u for u in User.objects.filter(username__in=names)}
    from khala_project.conf import khala_setting

    ttl = int(khala_setting("TOKEN_TTL_MAX_SECONDS"))
    return [harness.mint(users[name], [topic], ttl_seconds=ttl) for name in names]


def run(args, script: str, argv) -> int:
    import tempfile

    from bench.connections import DbSampler

    harness.raise_nofile(args.clients * 2 + 1024)
    env = harness.setup("connections_storm")
    from django.db import connection

    from khala_project.conf import DEFAULTS, khala_setting
    from projector.models import RUN_SUMMARIES

    topic = RUN_SUMMARIES
    harness.reset_topic(topic)
    with connection.cursor() as cur:
        cur.execute("SHOW max_connections")
        max_connections = int(cur.fetchone()[0])
    tokens = _users_and_tokens(args.users, topic)
    connection.close()
    tokens_file = os.path.join(tempfile.mkdtemp(prefix="khala-storm-"), "tokens.json")
    with open(tokens_file, "wb") as f:
        f.write(orjson.dumps(tokens))

    limits = {name: DEFAULTS[name] for name in (
        "LIMIT_CONNECTS_PER_USER", "LIMIT_SOCKETS_PER_USER", "LIMIT_JOINS_PER_SOCKET", "LIMIT_SUBSCRIBES_PER_SOCKET")}
    limits["LIMIT_CONNECTS_PER_IP"] = [args.ip_limit, args.ip_window]
    pool = int(khala_setting("DB_POOL_MAX_SIZE"))
    workers, clients = [], []
    sampler = DbSampler(env["database_url"])
    sampler.start()
    load_before = os.getloadavg()
    try:
        for _ in range(2):
            workers.append(harness.start("daphne", env, khala=limits))
        urls = ",".join(w.http_url for w in workers)
        per = [args.clients // args.client_processes + (1 if i < args.clients % args.client_processes else 0)
               for i in range(args.client_processes)]
        firsts = [sum(per[:i]) for i in range(len(per))]
        # one process per slice; harness.start_clients gives equal slices, so start them here
        import subprocess

        tmpdir = tempfile.mkdtemp(prefix="khala-storm-clients-")
        for i, (first, n) in enumerate(zip(firsts, per)):
            clients.append(subprocess.Popen(
                [sys.executable, script, "--storm", "--client", "--client-sockets", str(n), "--first-client", str(first),
                 "--urls", urls, "--tokens-file", tokens_file, "--topic", topic, "--source-ips", str(args.source_ips),
                 "--timeout", str(args.timeout), "--heartbeat-timeout", str(args.heartbeat_timeout), "--out", os.path.join(tmpdir, f"client{i}.json")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=harness.REPO_ROOT,
            ))
        t_initial = time.monotonic()
        ready = harness.wait_ready(clients)
        initial_seconds = time.monotonic() - t_initial
        live = sum(r[0] for r in ready)
        print(f"  phase 1: {live}/{args.clients} clients live in {initial_seconds:.1f} s", flush=True)
        if live < args.clients:
            print("  (phase 1 did not bring every client live; the storm still runs with those that are)", flush=True)
        time.sleep(2)  # the sampler's baseline before the drop (not waiting for an event)
        admission_before = [harness.scrape_metrics(w.http_url, ("khala_admission_",)) for w in workers]
        t_storm = time.monotonic()
        load_at_storm = os.getloadavg()
        harness.tell_clients(clients, "STORM")
        results = harness.collect_results(clients, timeout=args.timeout + 60)
        t_end = time.monotonic()
        load_after = os.getloadavg()
        admission_after = [harness.scrape_metrics(w.http_url, ("khala_admission_",)) for w in workers]
    finally:
        sampler.stop_event.set()
        sampler.join(timeout=5)
        harness.kill_clients(clients)
        for w in workers:
            w.stop()

    records = [r for result in results for r in result["records"]]
    rejoin = sorted(r["live_again"] for r in records if r["live_again"] is not None)
    codes: dict[str, int] = {}
    for r in records:
        for code, n in r["refusals"].items():
            codes[code] = codes.get(code, 0) + n
    # Each client's first error after the drop is the drop itself (its reset socket); every later
    # one is what a reconnect attempt was told before the client was live again.
    attempts: dict[str, int] = {}
    for r in records:
        for code in r["codes_after_drop"][1:]:
            attempts[code] = attempts.get(code, 0) + 1
    other = {c: n for c, n in attempts.items() if c != "rate_limited"}
    rate_limited_clients = sum(1 for r in records if "rate_limited" in r["codes_after_drop"][1:])
    clients_with_other = sum(1 for r in records if any(c != "rate_limited" for c in r["codes_after_drop"][1:]))
    # The servers' own count of refusals in the storm (khala_admission_decisions, both workers).
    refused_by_server: dict[str, float] = {}
    for before, after in zip(admission_before, admission_after):
        for name, value in after.items():
            if 'outcome="limited"' in name:
                key = name.split("{", 1)[1].split("}")[0] if "{" in name else name
                refused_by_server[key] = refused_by_server.get(key, 0) + value - before.get(name, 0)
    never_rejoined = sum(1 for r in records if r["live_again"] is None)
    initial_codes: dict[str, int] = {}
    for r in records:
        for code, n in r["initial_refusals"].items():
            initial_codes[code] = initial_codes.get(code, 0) + n
    db_peak, db_by_app = sampler.max_between(t_storm, t_end)
    db_peak_initial, db_by_app_initial = sampler.max_between(t_initial, t_storm)
    data = {
        "clients": args.clients,
        "workers": 2,
        "client_processes": args.client_processes,
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
        "storm": {
            "rejoined": len(rejoin),
            "never_rejoined": never_rejoined,
            "rejoin_seconds_p50": round(harness.percentile(rejoin, 50), 2) if rejoin else None,
            "rejoin_seconds_p99": round(harness.percentile(rejoin, 99), 2) if rejoin else None,
            "rejoin_seconds_max": round(rejoin[-1], 2) if rejoin else None,
            "clients_admitted_without_refusal": sum(1 for r in records if r["live_again"] is not None and not r["refusals"].get("rate_limited")),
            "clients_told_rate_limited": rate_limited_clients,
            "clients_with_other_failures": clients_with_other,
            "error_codes_after_drop": codes,
            "failed_attempt_codes": attempts,
            "other_failure_codes": other,
            "server_refusals": refused_by_server,
            "failed_attempts_total": sum(attempts.values()),
            "server_refusals_total": sum(refused_by_server.values()),
            "admission_metrics_after": admission_after,
            "db_connections_peak": db_peak,
            "db_connections_peak_by_application": db_by_app,
            "seconds": round(t_end - t_storm, 1),
        },
        "loadavg_before": load_before,
        "loadavg_at_storm": load_at_storm,
        "loadavg_after": load_after,
    }
    s = data["storm"]
    print(f"  storm: {s['rejoined']}/{args.clients} rejoined; p50 {s['rejoin_seconds_p50']} s, p99 {s['rejoin_seconds_p99']} s, "
          f"max {s['rejoin_seconds_max']} s; {rate_limited_clients} clients told rate_limited, "
          f"{clients_with_other} with another failure {other}; never rejoined {never_rejoined}")
    print(f"  failed reconnect attempts by code {attempts} (total {sum(attempts.values())}); refusals counted by the "
          f"servers {refused_by_server} (total {sum(refused_by_server.values()):.0f})")
    print(f"  db connections peak {db_peak} {db_by_app} vs pools' sum {2 * pool} (2 × DB_POOL_MAX_SIZE); "
          f"Postgres max_connections {max_connections}; phase 1 peak {db_peak_initial}")
    print(f"  load average before {load_before}, at the storm {load_at_storm}, after {load_after}")
    path = harness.write_result(RESULT_NAME, data, argv, script="connections")
    print(f"wrote {path}")
    return 0


def add_options(parser) -> None:
    parser.add_argument("--storm", action="store_true", help="the reconnect-storm scenario (see bench/connections_storm.py)")
    parser.add_argument("--clients", type=int, default=5000, help="--storm: SDK clients in total, over 2 workers")
    parser.add_argument("--source-ips", type=int, default=25, help="--storm: loopback source addresses the clients spread over")
    parser.add_argument("--users", type=int, default=500, help="--storm: users the clients spread over (a token each)")
    parser.add_argument("--ip-limit", type=int, default=100, help="--storm: LIMIT_CONNECTS_PER_IP count")
    parser.add_argument("--ip-window", type=float, default=5.0, help="--storm: LIMIT_CONNECTS_PER_IP window (s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="--storm: deadline of each phase (s)")
    parser.add_argument("--heartbeat-timeout", type=float, default=60.0, help="--storm: the clients' heartbeat_timeout (s)")
    parser.add_argument("--first-client", type=int, default=0, help=__import__("argparse").SUPPRESS)
    parser.add_argument("--urls", help=__import__("argparse").SUPPRESS)
    parser.add_argument("--tokens-file", help=__import__("argparse").SUPPRESS)
