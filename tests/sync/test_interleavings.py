"""Every order of the events around a subscribe, forced with a deterministic scheduler
(``tests.sync.delivery_sim``) against the real hub, session and followers, plus a stateful
hypothesis test over the same events.

Events: the replay read, a racing commit, the feed's head read, a hint's arrival, a head check,
a retention prune (before the replay read: replay path; after it: live path), and an
unsubscribe/resubscribe. Oracle: every journal row up to the topic head that the principal may see
is delivered once, in order — or a ``stale_cursor`` is sent and nothing after it.
"""

import itertools

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from tests.sync.delivery_sim import OWNERS, Client

STEPS = ("replay_read", "commit", "head_read", "hint", "head_check", "prune")


def run_order(token, order, *, resubscribe_at=None):
    client = Client(token)
    try:
        client.journal.commit("user:1")
        client.journal.commit("user:2")
        client.subscribe(0)
        client.complete("states")  # the subscribe's validation read: the follower now exists
        for index, step in enumerate(order):
            if step == "replay_read":
                client.complete("read_visible")
            elif step == "head_read":
                client.complete("states")
            elif step == "commit":
                client.journal.commit("user:1")
                client.journal.commit("public")
            elif step == "hint":
                client.hint()
            elif step == "head_check":
                client.head_check()
            elif step == "prune":
                client.journal.prune(1)
            client.check()
            if resubscribe_at == index:
                client.quiesce()
                client.unsubscribe()
                client.subscribe(client.resume_cursor())
        client.quiesce()
        client.check(settled=True)
        return client.segments
    finally:
        client.close()


@pytest.mark.parametrize("order", list(itertools.permutations(STEPS[:5])), ids="-".join)
def test_every_order_of_replay_commit_head_read_hint_and_head_check(mint, order):
    segments = run_order(mint(1), order)
    assert not segments[-1].stale  # nothing was pruned: everything is delivered


@pytest.mark.parametrize("order", list(itertools.permutations(STEPS)), ids="-".join)
def test_every_order_with_a_retention_prune(mint, order):
    """Pruning the first row (user:1's, watermark 1) is stale for the cursor 0 unless the replay
    already sent it; either way nothing is skipped silently."""
    segments = run_order(mint(1), order)
    assert segments[-1].stale == (1 not in segments[-1].delivered)


@pytest.mark.parametrize("at", range(5))
@pytest.mark.parametrize("order", [STEPS[:5], tuple(reversed(STEPS[:5]))], ids="-".join)
def test_unsubscribe_and_resubscribe_between_any_two_events(mint, order, at):
    segments = run_order(mint(1), order, resubscribe_at=at)
    assert len(segments) == 2 and not segments[-1].stale


def test_the_first_follow_race_order_is_delivered_without_a_later_write(mint):
    """The order of the bug: replay read, then the racing commit, then the feed's head read; no
    hint; head checks only. The row must arrive with no further write."""
    client = Client(mint(1))
    try:
        client.subscribe(0)
        client.complete("states")
        client.complete("read_visible")  # replay snapshot: empty topic
        client.journal.commit("user:1")  # after the replay read ...
        client.complete("states")  # ... before the feed's first head read
        for _ in range(3):
            client.head_check()
            while client.complete():
                pass
        client.check(settled=True)
        assert client.segments[-1].delivered == [1]
    finally:
        client.close()


def test_every_new_row_pruned_under_a_live_cursor_is_reported_stale(mint):
    """Found by the stateful test: the hub read nothing new (every new row already pruned) and
    used to offer nothing, so a live follower below the floor was never told."""
    client = Client(mint(1))
    try:
        client.subscribe(0)
        while client.complete():
            pass
        client.journal.commit("user:1")
        client.journal.prune(1)
        client.quiesce()
        client.check(settled=True)
        assert client.segments[-1].stale and client.segments[-1].delivered == []
    finally:
        client.close()


class DeliveryMachine(RuleBasedStateMachine):
    """Random interleavings of the same events, checked against the oracle after every step and
    once everything settled."""

    token = None

    def __init__(self):
        super().__init__()
        self.client = Client(self.token)
        self.client.subscribe(0)

    @rule(owner=st.sampled_from(OWNERS))
    def commit(self, owner):
        self.client.journal.commit(owner)

    @rule()
    def hint(self):
        self.client.hint()

    @rule()
    def head_check(self):
        self.client.head_check()

    @rule(count=st.integers(1, 3))
    def prune(self, count):
        self.client.journal.prune(count)

    @precondition(lambda self: self.client.journal.kinds())
    @rule(which=st.integers(0, 10))
    def complete_a_read(self, which):
        kinds = self.client.journal.kinds()
        self.client.complete(kinds[which % len(kinds)])

    @precondition(lambda self: self.client.quiet())
    @rule()
    def resubscribe(self):
        self.client.unsubscribe()
        self.client.subscribe(self.client.resume_cursor())

    @invariant()
    def delivered_is_the_journal_in_order(self):
        self.client.check()

    def teardown(self):
        try:
            self.client.quiesce()
            self.client.check(settled=True)
        finally:
            self.client.close()


def test_random_interleavings_deliver_the_journal_once_in_order_or_say_stale(mint):
    DeliveryMachine.token = mint(1)
    run_state_machine_as_test(
        DeliveryMachine, settings=hypothesis_settings(max_examples=150, stateful_step_count=30, deadline=None)
    )
