"""The raw ceiling of ``bench/fanout.py``: one ``websockets.broadcast`` server process per worker.

    .venv/bin/python bench/fanout_raw.py   (started by bench/fanout.py; not run by hand)

What it is: the least a Python process can do to put one text frame on N sockets — the
``websockets`` library's own ``broadcast`` (the message encoded to UTF-8 once, each socket's frame
built and written without a task switch, no backpressure), on uvloop like the uvicorn workers.
It answers every client frame (``phx_join``, ``sync:subscribe``, heartbeats) with an empty
``phx_reply`` ok, so the fan-out load clients connect to it exactly as to Khala.

Frames arrive on stdin, one per line (``F <frame text>``), written by the benchmark right after the
commit of the update the frame carries: the same frames Khala's live fan-out sends (the update
JSON spliced into a ``sync:update_batch`` push with ``join_ref`` null), with no database read, no
Redis hint and no per-socket state. The process prints ``PORT <port>`` once it listens.
"""

from __future__ import annotations

import asyncio
import sys

import orjson


async def main() -> None:
    from websockets.asyncio.server import broadcast, serve
    from websockets.exceptions import ConnectionClosed

    connections: set = set()

    async def handler(ws) -> None:
        connections.add(ws)
        try:
            async for message in ws:
                try:
                    frame = orjson.loads(message)
                    reply = [frame[0], frame[1], frame[2], "phx_reply", {"status": "ok", "response": {}}]
                except (orjson.JSONDecodeError, IndexError, TypeError):
                    continue
                await ws.send(orjson.dumps(reply).decode())
        except ConnectionClosed:
            pass
        finally:
            connections.discard(ws)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None, ping_interval=None, backlog=4096) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"F "):
                broadcast(connections, line[2:-1].decode())


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
