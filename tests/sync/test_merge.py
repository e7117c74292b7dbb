"""The replay→live handover: ``sync.follower.merge_live`` as a pure function, and the REAL
``Follower.go_live`` over buffered ranges, property-tested against the topic head."""

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sync.follower import BatchLimits, Follower, LiveBatch, LiveRange, merge_live
from sync.journal_reader import JournalPage, JournalReader
from sync.protocol import JournalRow, TopicState

TOPIC = "t"
EPOCH = "e"


def row(watermark: int) -> JournalRow:
    return JournalRow(TOPIC, watermark, f"d{watermark}", 1, "o", False, '{"n":1}', "h", 7)


def live_range(start: int, end: int, *, marker: bool = False) -> LiveRange:
    if marker:
        return LiveRange(start, end, None, EPOCH)
    rows = tuple(row(wm) for wm in range(start + 1, end + 1))
    batch = LiveBatch(TOPIC, start, end, rows, EPOCH, inline_limit_bytes=1 << 20, max_count=100, max_bytes=1 << 22)
    return LiveRange(start, end, rows, EPOCH, batch)


@st.composite
def handovers(draw):
    """A follower's position after its replay and what the hub offered meanwhile. The hub's feed
    starts at ``feed_start`` (any head it read: before or after the replay snapshot) and offers
    that start as a marker, then ranges up to ``head`` — its invariant (``sync.hub.TopicFeed``).
    Offers may repeat (a range offered again) and come in any order in the buffer."""
    head = draw(st.integers(0, 60))
    last_sent = draw(st.integers(0, head))
    feed_start = draw(st.integers(0, head))
    inner = draw(st.lists(st.integers(feed_start + 1, head), max_size=8)) if feed_start < head else []
    cuts = sorted(set(inner) | {head})
    offered, start = [live_range(0, feed_start, marker=True)], feed_start
    for end in cuts:
        if end > start:
            offered.append(live_range(start, end, marker=draw(st.booleans()) and draw(st.booleans())))
            start = end
    buffer = []
    for r in offered:
        buffer += [r] * draw(st.integers(1, 2))
    return head, last_sent, draw(st.permutations(buffer))


class ListJournal(JournalReader):
    """Rows 1..head, all visible; what a gap read returns."""

    def __init__(self, head):
        self.head = head

    async def read_visible(self, topic, after, through, owner, limit):
        rows = [row(wm) for wm in range(after + 1, min(through, self.head) + 1)][:limit]
        return JournalPage(rows, self.head, 0, EPOCH)


class RecordingWriter:
    join_ref, org_id, frames, closed = None, "o", False, False

    def __init__(self):
        self.watermarks = []

    def send(self, text, committed_at=None):
        frame = json.loads(text)
        self.watermarks += [u["watermark"] for u in frame[4]["updates"]]
        return True

    def send_many(self, frames):
        for text, committed_at in frames:
            self.send(text, committed_at)
        return len(frames)

    async def wait_room(self):
        return True

    def push_error(self, payload, *, frame_topic):
        raise AssertionError(f"unexpected error {payload}")

    def schedule(self, follower):
        raise AssertionError("go_live itself reads every gap")

    def end(self, follower, reason):
        raise AssertionError(f"unexpected end {reason}")


@settings(max_examples=300, deadline=None)
@given(handovers())
def test_go_live_sends_every_row_up_to_the_topic_head_once_in_order(case):
    head, last_sent, buffer = case
    writer = RecordingWriter()
    follower = Follower(
        TOPIC, writer, ListJournal(head), position=last_sent, state=TopicState(TOPIC, head, 0, EPOCH, 10**9, "warm", False), limits=BatchLimits(1 << 20, 1 << 22, 100)
    )
    for r in buffer:
        follower.offer(r)  # REPLAYING: buffered
    asyncio.run(follower.go_live())
    assert writer.watermarks == list(range(last_sent + 1, head + 1))
    assert follower.last_sent == head


def test_gap_is_reported_not_skipped():
    plan = merge_live(5, [LiveRange(8, 10, (9, 10))])
    assert plan.deliver == [] and plan.gap == (5, 8) and plan.through == 5
    assert [r.end for r in plan.pending] == [10]


def test_duplicates_and_overlaps_are_trimmed():
    plan = merge_live(5, [LiveRange(0, 3, (1, 2, 3)), LiveRange(3, 7, (4, 5, 6, 7))])
    assert plan.gap is None and plan.through == 7
    assert [(r.end, after) for r, after in plan.deliver] == [(7, 5)]
