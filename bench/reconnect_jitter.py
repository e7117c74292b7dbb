"""Wall-clock spread of a reconnect storm: N clients' first retries after one simultaneous drop.

The SDK tests assert the jitter on the delays the clients choose (from an injected rng); this
prints what those delays become on this machine's event loop: the clients' real backoff
(``khala_client.Backoff``, full jitter) and real ``asyncio.sleep``, all started at one instant.
Figures only; nothing is asserted. Writes ``bench/results/reconnect_jitter.json``.

    .venv/bin/python bench/reconnect_jitter.py [--clients 200] [--base 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

from khala_client import Backoff

RESULTS = Path(__file__).resolve().parent / "results" / "reconnect_jitter.json"


async def storm(clients: int, base: float) -> dict:
    backoffs = [Backoff(base=base, rng=random.Random(seed).random) for seed in range(clients)]
    dropped_at = time.monotonic()
    retried: list[float] = []

    async def retry(backoff: Backoff) -> None:
        await asyncio.sleep(backoff.next_delay())
        retried.append(time.monotonic() - dropped_at)

    await asyncio.gather(*(retry(b) for b in backoffs))
    retried.sort()
    buckets = {int(t * 100) for t in retried}
    return {
        "clients": clients,
        "base_seconds": base,
        "spread_ms": round((retried[-1] - retried[0]) * 1000, 1),
        "median_ms": round(statistics.median(retried) * 1000, 1),
        "busiest_10ms_bucket": max(sum(1 for t in retried if int(t * 100) == b) for b in buckets),
        "occupied_10ms_buckets": len(buckets),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200, help="clients dropped at once (default 200)")
    parser.add_argument("--base", type=float, default=0.5, help="backoff base in seconds (the SDK default, 0.5)")
    args = parser.parse_args()
    result = asyncio.run(storm(args.clients, args.base))
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
