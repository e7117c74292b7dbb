"""``khala_live_delivery_lag_seconds`` is observed for a 1-in-16 sample of (socket, live frame)
pairs, not for every frame on every socket (that cost ~3 % of a worker's CPU in fan-out)."""

import asyncio

from sync import metrics
from sync.outbound import LIVE_LAG_SAMPLE_EVERY, LagSampler, OutboundQueue, run_writer
from tests.support.waiting import wait_until


class RecordingWriter:
    def __init__(self):
        self.sent = []

    async def send_text(self, text):
        self.sent.append(text)


def lag_totals():
    count = total = 0.0
    for metric in metrics.LIVE_DELIVERY_LAG.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return count, total


async def test_lag_is_observed_for_one_pair_in_sixteen_across_the_workers_sockets():
    sockets, frames = 4, 64
    queues = [OutboundQueue(1000, 1 << 24) for _ in range(sockets)]
    writers = [RecordingWriter() for _ in range(sockets)]
    count_before, sum_before = lag_totals()
    tasks = [asyncio.create_task(run_writer(q, w, wall_clock=lambda: 1000.0)) for q, w in zip(queues, writers)]
    try:
        for i in range(frames):
            for queue in queues:
                assert queue.offer(f"live {i}", 999.75)  # a live frame: its oldest row committed 250 ms ago
                assert queue.offer(f"reply {i}")  # not a live frame: never timed
        await wait_until(lambda: all(len(w.sent) == 2 * frames for w in writers), 5.0, interval=0.001, message="every frame written")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    count_after, sum_after = lag_totals()
    pairs = sockets * frames
    assert count_after - count_before == pairs // LIVE_LAG_SAMPLE_EVERY == 16
    assert abs((sum_after - sum_before) - 16 * 0.25) < 1e-6


def test_sampler_times_the_first_pair_then_every_nth():
    count_before, _ = lag_totals()
    sampler = LagSampler(every=4)
    for _ in range(9):
        sampler.sent(10.0, lambda: 10.5)
    assert lag_totals()[0] - count_before == 3  # pairs 1, 5 and 9
