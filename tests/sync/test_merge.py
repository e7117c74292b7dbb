"""The replay→live merge (``sync.follower.merge_live``) as a pure, property-tested function."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sync.follower import LiveRange, merge_live


@st.composite
def handovers(draw):
    head = draw(st.integers(0, 60))
    last_sent = draw(st.integers(0, head))
    hub_start = draw(st.integers(0, head))  # where the hub's cursor was when the socket registered
    cuts = sorted(set(draw(st.lists(st.integers(hub_start + 1, max(head, hub_start + 1)), max_size=8))) | {head})
    ranges, start = [], hub_start
    for end in cuts:
        if end > start:
            ranges.append(LiveRange(start, end, tuple(range(start + 1, end + 1))))
            start = end
    # lossy delivery: drop some ranges, duplicate some, turn some into "buffer dropped" markers, shuffle
    kept = []
    for r in ranges:
        action = draw(st.sampled_from(["keep", "keep", "drop", "dup", "marker"]))
        if action == "keep":
            kept.append(r)
        elif action == "dup":
            kept += [r, LiveRange(r.start, r.end, r.rows)]
        elif action == "marker":
            kept.append(LiveRange(r.start, r.end, None))
    kept = draw(st.permutations(kept))
    return head, last_sent, list(kept), ranges


def run_handover(last_sent, buffer):
    """What ``Session._go_live`` does, with the journal as the list 1..∞."""
    sent = []
    while True:
        plan = merge_live(last_sent, buffer)
        for live, after in plan.deliver:
            sent += [wm for wm in live.rows if wm > after]
        last_sent = max(last_sent, plan.through)
        if plan.gap is None:
            return sent, last_sent
        lo, hi = plan.gap
        assert lo == last_sent and hi > lo
        sent += list(range(lo + 1, hi + 1))  # the journal read of the gap
        last_sent = hi
        buffer = plan.pending


@settings(max_examples=500)
@given(handovers())
def test_merge_sends_every_row_once_in_order(case):
    head, last_sent, buffer, _ = case
    sent, position = run_handover(last_sent, buffer)
    top = max([r.end for r in buffer], default=last_sent)
    assert sent == list(range(last_sent + 1, max(top, last_sent) + 1))
    assert position == max(top, last_sent)


def test_gap_is_reported_not_skipped():
    plan = merge_live(5, [LiveRange(8, 10, (9, 10))])
    assert plan.deliver == [] and plan.gap == (5, 8) and plan.through == 5
    assert [r.end for r in plan.pending] == [10]


def test_duplicates_and_overlaps_are_trimmed():
    plan = merge_live(5, [LiveRange(0, 3, (1, 2, 3)), LiveRange(3, 7, (4, 5, 6, 7))])
    assert plan.gap is None and plan.through == 7
    assert [(r.end, after) for r, after in plan.deliver] == [(7, 5)]
