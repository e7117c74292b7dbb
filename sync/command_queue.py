"""The session's command queue: slow work (join, subscribe, catch-up …) run one item at a time,
in arrival order, by a task of its own.

Why not an ``asyncio.Queue`` drained by a task living as long as the socket: most sockets are
idle, and that pair cost ~4.5 KiB per idle socket (the queue's three 64-slot deques and its
``Event``, the task, its coroutine frames and the waiting future; measured in bench/README.md,
"Where an idle socket's memory goes"). Here the deque exists only while items are queued and the
task only while items are queued or one runs: an idle socket holds two ``None``s.
"""

from __future__ import annotations

import asyncio
from collections import deque


class CommandQueue:
    """FIFO of items, each handed to ``run_one(item)`` (a coroutine function) after the previous
    one's ``run_one`` returned.

    ``len()`` counts the items waiting, not the one running (the session bounds that number).
    ``put`` never waits and never refuses: the bound is the caller's. ``close`` drops what waits
    and cancels what runs; nothing queued afterwards runs. ``run_one`` must not raise (the
    session turns a failed command into a close); if it does, the item is dropped, the task ends
    with the exception and the next ``put`` starts a new one."""

    __slots__ = ("_run_one", "_items", "_task", "_closed")

    def __init__(self, run_one):
        self._run_one = run_one
        self._items: deque | None = None  # only while items wait
        self._task: asyncio.Task | None = None  # only while items wait or one runs
        self._closed = False

    def __len__(self) -> int:
        items = self._items
        return len(items) if items is not None else 0

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing runs (then the queue holds no deque and no task)."""
        return self._task is None

    def put(self, item) -> None:
        if self._closed:
            return
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._items:
                item = self._items.popleft()
                await self._run_one(item)
        finally:
            # No await between the emptiness check and here: a ``put`` from now on starts a new task.
            self._items = None
            self._task = None

    def close(self) -> None:
        self._closed = True
        self._items = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
