"""Token expiry and ``sync:refresh`` of ``sync.session.Session``, driven by a fake clock.

The session's deadline is the token's ``exp`` (wall clock, read through ``tokens.verifier.clock``)
plus ``SESSION_EXPIRY_GRACE_SECONDS``, carried onto the session's own (fake) clock at join."""

import json

import pytest

from sync.outbound import OutboundQueue
from tests.support.waiting import wait_until
from tests.support.clock import FakeClock
from tests.sync.test_session_clock import FakeHub, drain, joined_session
from sync.session import Session, Status

pytestmark = pytest.mark.django_db(transaction=True)

WALL = 1_900_000_000  # the verifier's (fake) wall clock during these tests
TTL = 120
GRACE = 5.0


class RevokedSessions:
    def __init__(self):
        self.revoked = set()

    async def revoked_reason(self, principal):
        return "user_signed_out" if principal.session_id in self.revoked else None


class Follower:
    """Stands for a followed topic: a refresh must leave it exactly as it is."""

    topic = "runtime.run_summaries"
    status = None
    last_sent = 7

    def watermark(self):
        return {"topic": self.topic, "watermark": 7}


@pytest.fixture
def wall(monkeypatch):
    from tokens import verifier

    wall_clock = FakeClock(WALL)
    monkeypatch.setattr(verifier, "clock", wall_clock)
    return wall_clock


async def joined(mint, khala, **claims):
    khala(SESSION_EXPIRY_GRACE_SECONDS=GRACE, HEARTBEAT_TIMEOUT_SECONDS=10_000.0)
    hub = FakeHub()
    hub.revocation = RevokedSessions()
    token = mint(1, now=WALL, ttl=TTL, oa_session_id="sess_a", **claims)
    return await joined_session(mint, khala, hub=hub, token=token, join_timeout=5.0)


async def refresh(session, queue, token, ref="9"):
    session.handle_text(json.dumps(["1", ref, "sync:v1", "sync:refresh", {"token": token}]))
    await wait_until(lambda: len(queue), 5, interval=0.01, message="the refresh reply")
    return drain(queue)


async def test_an_idle_socket_closes_at_exp_plus_grace(mint, khala, wall):
    session, clock, queue, closes = await joined(mint, khala)
    deadline = 1000.0 + TTL + GRACE
    assert session.expires_at == deadline
    session.tick(deadline - 0.001)
    assert closes == [] and session.status is Status.JOINED
    session.tick(deadline)
    assert closes == [4419] and session.status is Status.CLOSED
    [error] = [f for f in drain(queue) if f[3] != "sync:heartbeat"]
    assert error[3] == "sync:error" and error[4]["code"] == "token_expired" and error[4]["action"] == "disconnect"


async def test_a_refresh_moves_the_deadline_and_keeps_subscriptions_and_queue(mint, khala, wall):
    session, clock, queue, closes = await joined(mint, khala)
    follower = session.followers["runtime.run_summaries"] = Follower()
    assert session.send('["queued frame"]')  # not yet written when the refresh arrives
    wall.now += 100
    clock.now += 100
    session.handle_text(json.dumps(["1", "9", "sync:v1", "sync:refresh",
                                    {"token": mint(1, now=WALL + 100, ttl=TTL, oa_session_id="sess_a")}]))
    await wait_until(lambda: len(queue) >= 2, 5, interval=0.01, message="the refresh reply")
    queued, reply = drain(queue)
    assert queued == ["queued frame"]
    assert reply[4] == {"status": "ok", "response": {"expires_at": WALL + 100 + TTL}}
    assert session.followers == {"runtime.run_summaries": follower}
    assert session.principal.expires_at == WALL + 100 + TTL and session.principal.claims == {}  # not kept past the refresh
    session.tick(1000.0 + TTL + GRACE)  # the old deadline passes
    assert closes == []
    assert session.expires_at == 1100.0 + TTL + GRACE
    session.tick(session.expires_at)
    assert closes == [4419]


@pytest.mark.parametrize(
    "claims, reason",
    [({"sub": "user:2", "oa_user_id": 2}, "subject_mismatch"), ({"oa_session_id": "sess_other"}, "session_mismatch")],
)
async def test_a_refresh_for_another_subject_or_session_is_refused_and_closes(mint, khala, wall, claims, reason):
    session, clock, queue, closes = await joined(mint, khala)
    token = mint(1, now=WALL, ttl=TTL, **{"oa_session_id": "sess_a", **claims})
    [reply] = await refresh(session, queue, token)
    assert reply[4]["status"] == "error"
    assert reply[4]["response"]["code"] == "unauthorized" and reply[4]["response"]["reason"] == reason
    assert closes == [4401] and session.principal.subject == "user:1"


async def test_expired_and_forged_refreshes_are_refused_and_the_socket_stays(mint, khala, wall):
    from tests.support.tokens import sign, sync_claims
    from tests.sync.conftest import SIGNING_KID

    session, clock, queue, closes = await joined(mint, khala)
    expired = mint(1, now=WALL - 2 * TTL, ttl=TTL, oa_session_id="sess_a")
    forged = sign(sync_claims(1, ["runtime.run_summaries"], now=WALL, oa_session_id="sess_a"), kid=SIGNING_KID,
                  secret="not-the-signing-secret-" + "q" * 40)
    for ref, token, reason in [("5", expired, "token_expired"), ("6", forged, "invalid_signature"),
                               ("7", None, "missing_token")]:
        [reply] = await refresh(session, queue, token, ref=ref)
        assert reply[1] == ref and reply[4]["response"]["code"] == "unauthorized", reply
        assert reply[4]["response"]["reason"] == reason
    assert closes == [] and session.expires_at == 1000.0 + TTL + GRACE


async def test_a_refresh_of_a_revoked_session_is_refused_and_closes(mint, khala, wall):
    session, clock, queue, closes = await joined(mint, khala)
    session.hub.revocation.revoked.add("sess_a")
    [reply] = await refresh(session, queue, mint(1, now=WALL, ttl=TTL, oa_session_id="sess_a"))
    assert reply[4]["response"]["code"] == "reauth_required"
    assert closes == [4403]


async def test_a_refresh_before_join_is_refused(mint, khala, wall):
    queue = OutboundQueue(100, 1 << 20)
    session = Session(FakeHub(), params={}, close_socket=lambda *a: None, outbound=queue, clock=FakeClock())
    session.handle_text(json.dumps(["1", "2", "sync:v1", "sync:refresh", {"token": mint(1)}]))
    [reply] = drain(queue)
    assert reply[4]["response"]["code"] == "bad_topic"
