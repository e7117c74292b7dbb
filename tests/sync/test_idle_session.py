"""What the session of an idle socket keeps. Idle sockets are most sockets, so what each holds is
the worker's memory per socket (``bench/connections.py``; bench/README.md, "Where an idle socket's
memory goes"): after a join and a subscribe, with no command waiting or running, the session holds
no command deque and no command task (``sync.command_queue``), and its principal not the token's
decoded claims. Driven on the real hub, session and follower (``tests.sync.delivery_sim``)."""

import asyncio

from sync.session import Status
from tests.sync.delivery_sim import Client


def session_tasks(client: Client) -> list[asyncio.Task]:
    return [task for task in asyncio.all_tasks(client.loop) if not task.done()]


def assert_at_rest(client: Client) -> None:
    commands = client.session._commands
    assert commands._items is None, "an idle session keeps no command deque"
    assert commands._task is None, "an idle session keeps no command task"
    assert session_tasks(client) == []
    assert client.session.principal.claims == {}, "the decoded token claims are not kept past the join"


def test_a_joined_and_subscribed_session_at_rest_allocates_no_command_queue_or_task(mint):
    client = Client(mint(1))
    try:
        client.journal.commit("user:1")
        client.subscribe(0)
        client.quiesce()
        client.check(settled=True)
        assert client.session.status is Status.LIVE
        assert_at_rest(client)

        # The next commands still run in order, on a task made for them, gone again afterwards.
        client.unsubscribe()
        client.journal.commit("user:1")
        client.subscribe(client.resume_cursor())
        client.quiesce()
        client.check(settled=True)
        assert [segment.delivered for segment in client.segments] == [[1], [2]]
        assert_at_rest(client)
    finally:
        client.close()
