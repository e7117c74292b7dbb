"""``sync.command_queue.CommandQueue`` on its own: one item at a time, in arrival order, on a task
that exists only while items wait or run."""

import asyncio

from sync.command_queue import CommandQueue
from tests.support.waiting import wait_until


async def loop_turns(count: int = 20) -> None:
    """Let every ready task run ``count`` steps (to see that something did NOT happen)."""
    for _ in range(count):
        await asyncio.sleep(0)


class Recorder:
    """``run_one`` that records start and end, and waits for the test's go per item."""

    def __init__(self):
        self.events: list[tuple[str, object]] = []
        self.gates: dict[object, asyncio.Event] = {}

    async def run_one(self, item) -> None:
        self.events.append(("start", item))
        gate = self.gates.setdefault(item, asyncio.Event())
        await gate.wait()
        self.events.append(("end", item))

    def release(self, item) -> None:
        self.gates.setdefault(item, asyncio.Event()).set()


async def test_items_run_one_at_a_time_in_arrival_order_and_the_task_ends_when_none_wait():
    recorder = Recorder()
    queue = CommandQueue(recorder.run_one)
    assert queue.idle and len(queue) == 0 and queue._items is None and queue._task is None
    for item in ("a", "b", "c"):
        queue.put(item)
    assert not queue.idle and len(queue) == 3  # nothing taken before the task's first step
    await wait_until(lambda: recorder.events == [("start", "a")], 2, interval=0.001)
    assert len(queue) == 2  # the running item is not counted
    recorder.release("b")  # b may not start before a ended, even if released first
    await loop_turns()
    assert recorder.events == [("start", "a")]
    recorder.release("a")
    recorder.release("c")
    await wait_until(lambda: queue.idle, 2, interval=0.001)
    assert recorder.events == [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b"), ("start", "c"), ("end", "c")]
    assert queue._items is None and queue._task is None and len(queue) == 0

    queue.put("d")  # a put after the queue went idle starts a new task
    recorder.release("d")
    await wait_until(lambda: queue.idle, 2, interval=0.001)
    assert recorder.events[-2:] == [("start", "d"), ("end", "d")]


async def test_close_cancels_the_running_item_drops_the_waiting_ones_and_refuses_more():
    recorder = Recorder()
    queue = CommandQueue(recorder.run_one)
    queue.put("a")
    queue.put("b")
    await wait_until(lambda: recorder.events == [("start", "a")], 2, interval=0.001)
    task = queue._task
    queue.close()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert queue.idle and len(queue) == 0
    queue.put("c")
    recorder.release("b")
    recorder.release("c")
    await loop_turns()
    assert recorder.events == [("start", "a")] and queue.idle
