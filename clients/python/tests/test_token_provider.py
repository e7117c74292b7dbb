"""``api_token_provider`` asks for exactly the subscribed topics and refuses a token granting fewer.

The token endpoint is a stand-in ``HttpApi`` here (what it answers is the point); the README's
quickstart runs the same provider against a real server (``tests/docs``).
"""

import pytest

from khala_client import FatalError, HttpError, KhalaClient, MemoryStore, State, api_token_provider
from khala_client.http import HttpApi


class TokenEndpoint(HttpApi):
    def __init__(self, answer):
        super().__init__("http://khala.test")
        self.answer = answer
        self.requests = []
        self.sessions = []

    async def mint_sync_token(self, api_token, *, scopes=None, ttl_seconds=None, session_id=None):
        self.requests.append((api_token, scopes))
        self.sessions.append(session_id)
        return self.answer(scopes)


def grant_asked(scopes):
    return {"token": "a.b.c", "expires_in": 60, "scopes": list(scopes)}


async def test_requests_exactly_the_given_scopes_on_every_call():
    endpoint = TokenEndpoint(grant_asked)
    provide = api_token_provider("http://khala.test", "api-tok", http=endpoint,
                                 scopes=["runtime.run_summaries", "runtime.notifications", "runtime.run_summaries"])
    assert await provide() == "a.b.c"
    assert await provide() == "a.b.c"
    assert endpoint.requests == [("api-tok", ["runtime.run_summaries", "runtime.notifications"])] * 2


async def test_a_refresh_asks_the_endpoint_to_continue_the_session():
    endpoint = TokenEndpoint(grant_asked)
    provide = api_token_provider("http://khala.test", "api-tok", http=endpoint, scopes=["runtime.run_summaries"])
    await provide()
    await provide(session_id="sess_open_socket")
    assert endpoint.sessions == [None, "sess_open_socket"]


@pytest.mark.parametrize("scopes", [[], [""], "runtime.run_summaries", None])
def test_scopes_are_required(scopes):
    with pytest.raises(ValueError, match="topics the client subscribes to"):
        api_token_provider("http://khala.test", "api-tok", scopes=scopes)
    with pytest.raises(TypeError):
        api_token_provider("http://khala.test", "api-tok")  # the server's default would be another topic


async def test_a_token_granting_fewer_scopes_is_refused():
    endpoint = TokenEndpoint(lambda scopes: {"token": "a.b.c", "scopes": ["runtime.codex_worker_summaries"]})
    provide = api_token_provider("http://khala.test", "t", scopes=["runtime.run_summaries"], http=endpoint)
    with pytest.raises(FatalError) as refused:
        await provide()
    assert refused.value.code == "scopes_not_granted"
    assert refused.value.details["missing"] == ["runtime.run_summaries"]
    assert "missing: runtime.run_summaries" in refused.value.message

    silent = TokenEndpoint(lambda scopes: {"token": "a.b.c"})  # no scopes in the answer: nothing is known granted
    with pytest.raises(FatalError, match="scopes_not_granted"):
        await api_token_provider("http://khala.test", "t", scopes=["x"], http=silent)()


async def test_invalid_scope_is_fatal_other_http_errors_are_not():
    def refuse(scopes):
        raise HttpError("invalid_scope", "scope(s) not allowed: x", {"code": "invalid_scope"}, 422)

    with pytest.raises(FatalError, match="invalid_scope"):
        await api_token_provider("http://khala.test", "t", scopes=["x"], http=TokenEndpoint(refuse))()

    def down(scopes):
        raise HttpError("token_issuer_unavailable", "no key", None, 503)

    with pytest.raises(HttpError) as raised:
        await api_token_provider("http://khala.test", "t", scopes=["x"], http=TokenEndpoint(down))()
    assert not isinstance(raised.value, FatalError)


async def test_a_client_whose_token_lacks_its_topics_stops_before_connecting():
    endpoint = TokenEndpoint(lambda scopes: {"token": "a.b.c", "scopes": []})
    provider = api_token_provider("http://khala.test", "t", scopes=["runtime.run_summaries"], http=endpoint)
    client = KhalaClient("http://127.0.0.1:9", provider, MemoryStore(), topics=["runtime.run_summaries"], http=endpoint)
    run = client.start()
    with pytest.raises(FatalError, match="scopes_not_granted"):
        await client.wait_live(timeout=30)
    with pytest.raises(FatalError, match="scopes_not_granted"):
        await run  # the loop itself stopped with it (no retry: asking again cannot help)
    assert client.state == State.CLOSED and client.connects == 0
    await client.close()
