"""A REAL daphne worker mints EdDSA, ES256 and RS256 tokens through its HTTP issuer and admits
sockets that join with them; it also admits a token of an external issuer whose JWKS the test serves.
The ring is rotated between mints through KHALA_SIGNING_KEYS_FILE, which the worker re-reads."""

import asyncio
import json
import time
import urllib.request

import jwt
import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from projector.models import V1_TOPICS
from tests.support.fixtures import asgi_server  # noqa: F401  (fixture re-export)
from tests.support.wsclient import PhoenixClient
from tests.tokens.crafting import valid_claims
from tests.tokens.jwks_server import serve_jwks
from tokens import keyring as kr

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

RUNS = "runtime.run_summaries"
ISSUER = "https://id.example.test"
AUDIENCE = "khala-from-id"


@pytest.fixture
def api_token(transactional_db):
    from projector.topics import ensure_v1_topics

    ensure_v1_topics()
    user = get_user_model().objects.create_user(username="asym", password="pw-asym-123")
    return user, Token.objects.create(user=user).key


def mint_over_http(server, api_key: str) -> str:
    request = urllib.request.Request(
        server.http_url + "/api/sync/token",
        data=json.dumps({"scopes": [RUNS]}).encode(),
        headers={"Authorization": f"Token {api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]["token"]


async def join_and_subscribe(server, token) -> tuple[dict, dict]:
    client = await PhoenixClient.connect(server.ws_url(token=token))
    try:
        joined = await client.join()
        subscribed, _ = await client.subscribe([RUNS])
        return joined, subscribed
    finally:
        await client.close()


def test_sockets_join_with_tokens_of_every_algorithm(asgi_server, api_token, tmp_path):
    _, api_key = api_token
    keys_file = tmp_path / "signing-keys"
    keys_file.write_text(kr.Keyring(keys=(kr.generate_key("HS256"),)).to_setting())
    server = asgi_server("daphne", khala={"SIGNING_KEYS": "", "SIGNING_KEYS_FILE": str(keys_file)})
    ring = kr.parse_signing_keys(keys_file.read_text().strip())
    for alg in ("EdDSA", "ES256", "RS256"):
        ring = kr.rotate_keys(ring, kr.generate_key(alg))
        keys_file.write_text(ring.to_setting())
        token = mint_over_http(server, api_key)
        assert jwt.get_unverified_header(token)["alg"] == alg
        joined, subscribed = asyncio.run(join_and_subscribe(server, token))
        assert joined["status"] == "ok", (alg, joined)
        assert subscribed["status"] == "ok", (alg, subscribed)
    jwks = json.load(urllib.request.urlopen(server.http_url + "/.well-known/jwks.json", timeout=10))
    assert [k["alg"] for k in jwks["keys"]] == ["RS256", "ES256", "EdDSA"]


def test_a_socket_joins_with_an_external_issuers_token_and_not_with_a_forged_one(asgi_server, api_token):
    user, _ = api_token
    jwks = serve_jwks()
    try:
        key = kr.generate_key("ES256")
        jwks.publish(key.public_jwk())
        server = asgi_server(
            "daphne",
            khala={
                "SIGNING_KEYS": kr.Keyring(keys=(kr.generate_key("HS256"),)).to_setting(),
                "TRUSTED_ISSUERS": [{"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks.url}],
            },
        )
        now = int(time.time())
        claims = valid_claims(now=now, iss=ISSUER, aud=AUDIENCE, sub=f"user:{user.pk}", oa_user_id=user.pk,
                              oa_org_id=f"user:{user.pk}", oa_sync_scopes=list(V1_TOPICS))
        token = jwt.encode(claims, key.signing_key(), algorithm="ES256", headers={"kid": key.kid})
        joined, subscribed = asyncio.run(join_and_subscribe(server, token))
        assert joined["status"] == "ok" and subscribed["status"] == "ok"
        assert jwks.fetches == 1

        impostor = kr.generate_key("ES256")
        forged = jwt.encode(claims, impostor.signing_key(), algorithm="ES256", headers={"kid": key.kid})
        refused = asyncio.run(join_only(server, forged))
        assert refused["status"] == "error"
        assert refused["response"]["reason"] == "invalid_signature"
    finally:
        jwks.stop()


async def join_only(server, token) -> dict:
    client = await PhoenixClient.connect(server.ws_url(token=token))
    try:
        return await client.join()
    finally:
        await client.close()
