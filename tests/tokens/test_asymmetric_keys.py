"""EdDSA, ES256 and RS256 signing keys: parsing, `sync_keys --alg`, minting through the issuer API,
verification, the published JWKS, and the per-key algorithm allow-list (no RS256→HS256 confusion,
no `none`)."""

import io
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.management import call_command
from django.test import Client

from tests.tokens.crafting import KEYS, SECRET_A, b64, craft
from tokens import keyring as kr
from tokens.verifier import TokenRejected, verify_sync_token

ASYMMETRIC = ("EdDSA", "ES256", "RS256")


@pytest.fixture(scope="module")
def generated():
    """One fresh key per algorithm (RSA generation is the slow one; do it once)."""
    return {alg: kr.generate_key(alg) for alg in kr.ALGORITHMS}


def ring_of(*keys) -> str:
    return kr.Keyring(keys=tuple(keys)).to_setting()


def mint(api_client) -> dict:
    response = api_client.post("/api/sync/token", {}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["data"]


def rejection(token) -> str:
    with pytest.raises(TokenRejected) as caught:
        verify_sync_token(token)
    return caught.value.reason


# --- the ring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_asymmetric_entries_round_trip_through_the_setting(generated, alg):
    key = generated[alg]
    ring = kr.parse_signing_keys(ring_of(key))
    assert ring.current().alg == alg and ring.current().kid == key.kid
    assert ring.current().secret == key.secret
    assert ring.to_setting().startswith(f"{key.kid}:{alg}:")


def test_a_mixed_ring_keeps_order_and_algorithms(generated):
    value = ",".join([KEYS, ring_of(generated["EdDSA"], generated["RS256"])])
    ring = kr.parse_signing_keys(value)
    assert [(k.kid, k.alg) for k in ring.keys] == [
        ("kid-a", "HS256"),
        ("kid-b", "HS256"),
        (generated["EdDSA"].kid, "EdDSA"),
        (generated["RS256"].kid, "RS256"),
    ]


def test_masked_setting_hides_private_keys(generated):
    ring = kr.parse_signing_keys(ring_of(generated["ES256"]))
    masked = kr.masked_setting(ring)
    assert masked == f"{generated['ES256'].kid}:ES256:<private key hidden>"


@pytest.mark.parametrize(
    "entry, fragment",
    [
        ("k1:EdDSA:not*base64", "not base64url PKCS#8 DER"),
        ("k1:ES256:" + b64(b"not a key at all, just bytes"), "not base64url PKCS#8 DER"),
    ],
)
def test_unloadable_private_keys_are_refused(entry, fragment):
    with pytest.raises(kr.KeyringMisconfigured, match=fragment):
        kr.parse_signing_keys(entry)


def test_a_key_labelled_with_another_algorithm_is_refused(generated):
    rsa_entry = generated["RS256"].setting_entry()
    mislabelled = rsa_entry.replace(":RS256:", ":EdDSA:", 1)
    with pytest.raises(kr.KeyringMisconfigured, match="not a EdDSA private key"):
        kr.parse_signing_keys(mislabelled)


def test_short_rsa_keys_are_refused():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = small.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(kr.KeyringMisconfigured, match="at least 2048 bits"):
        kr.parse_signing_keys(f"small:RS256:{b64(der)}")


def test_an_hs256_secret_containing_colons_stays_an_hs256_secret():
    ring = kr.parse_signing_keys("k:" + "RS512:" * 8)
    assert ring.current().alg == "HS256" and ring.current().secret == ("RS512:" * 8).encode()


# --- sync_keys --alg ------------------------------------------------------------------------


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("sync_keys", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_generate_with_alg_prints_a_usable_ring(alg):
    out, err = run("generate", "--alg", alg, "--show-secrets")
    value = out.strip().removeprefix("KHALA_SIGNING_KEYS=")
    ring = kr.parse_signing_keys(value)
    assert [k.alg for k in ring.keys] == [alg]
    assert f"({alg}, current)" in err


def test_generate_hides_private_keys_by_default():
    out, _ = run("generate", "--alg", "EdDSA")
    assert out.strip().endswith(":EdDSA:<private key hidden>")


def test_rotation_from_hs256_to_eddsa_keeps_old_tokens_valid(khala_settings, api_client, generated):
    """add (verify-only) → promote → retire, across algorithms; tokens of each key verify while it is in the ring."""
    khala_settings(SIGNING_KEYS=f"kid-a:{SECRET_A}")
    old = mint(api_client)
    out, _ = run("add", "--alg", "EdDSA", "--show-secrets")
    added = kr.parse_signing_keys(out.strip().removeprefix("KHALA_SIGNING_KEYS="))
    new_kid = added.kids()[1]
    assert [(k.kid, k.alg) for k in added.keys] == [("kid-a", "HS256"), (new_kid, "EdDSA")]

    khala_settings(SIGNING_KEYS=added.to_setting())
    assert mint(api_client)["kid"] == "kid-a"  # verify-only: not yet signing
    out, _ = run("promote", new_kid, "--show-secrets")
    khala_settings(SIGNING_KEYS=out.strip().removeprefix("KHALA_SIGNING_KEYS="))
    new = mint(api_client)
    assert new["kid"] == new_kid and jwt.get_unverified_header(new["token"])["alg"] == "EdDSA"
    assert verify_sync_token(old["token"]).kid == "kid-a"
    assert verify_sync_token(new["token"]).kid == new_kid

    out, _ = run("retire", "kid-a", "--show-secrets")
    khala_settings(SIGNING_KEYS=out.strip().removeprefix("KHALA_SIGNING_KEYS="))
    assert rejection(old["token"]) == "unknown_kid"
    assert verify_sync_token(new["token"]).kid == new_kid


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_rotate_with_alg_signs_with_the_new_key(khala_settings, generated, alg):
    khala_settings(SIGNING_KEYS=KEYS)
    out, _ = run("rotate", "--alg", alg, "--show-secrets")
    ring = kr.parse_signing_keys(out.strip().removeprefix("KHALA_SIGNING_KEYS="))
    assert ring.current().alg == alg and ring.kids()[1:] == ["kid-a", "kid-b"]


# --- minting and verifying end to end -------------------------------------------------------


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_tokens_minted_with_each_algorithm_verify(khala_settings, api_client, user, generated, alg):
    key = generated[alg]
    khala_settings(SIGNING_KEYS=ring_of(key))
    data = mint(api_client)
    header = jwt.get_unverified_header(data["token"])
    assert header == {"alg": alg, "typ": "JWT", "kid": key.kid}
    principal = verify_sync_token(data["token"])
    assert principal.kid == key.kid and principal.user_id == user.pk


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_a_token_signed_by_another_key_of_the_same_algorithm_is_invalid_signature(khala_settings, api_client, generated, alg):
    khala_settings(SIGNING_KEYS=ring_of(generated[alg]))
    token = mint(api_client)["token"]
    impostor = kr.generate_key(alg)
    # Same kid, other private key: the header and claims are right, the signature is not.
    head, body, _ = token.split(".")
    forged = jwt.encode(json.loads(jwt.utils.base64url_decode(body)), impostor.signing_key(), algorithm=alg,
                        headers={"kid": generated[alg].kid})
    assert rejection(forged) == "invalid_signature"


def test_legacy_endpoint_signs_with_the_asymmetric_key_too(khala_settings, api_client, generated):
    khala_settings(SIGNING_KEYS=ring_of(generated["ES256"]))
    response = api_client.post("/api/khala/token", {}, format="json")
    assert response.status_code == 200, response.content
    token = response.json()["token"]
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert verify_sync_token(token).kid == generated["ES256"].kid


# --- the published JWKS ---------------------------------------------------------------------


def test_jwks_publishes_public_keys_only_with_kid_and_is_cacheable(khala_settings, generated, db):
    khala_settings(SIGNING_KEYS=",".join([ring_of(generated["EdDSA"]), KEYS, ring_of(generated["ES256"], generated["RS256"])]),
                   JWKS_CACHE_MAX_AGE_SECONDS=120)
    response = Client().get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response["Cache-Control"] == "public, max-age=120"
    keys = response.json()["keys"]
    assert [(k["kid"], k["alg"], k["use"]) for k in keys] == [
        (generated["EdDSA"].kid, "EdDSA", "sig"),
        (generated["ES256"].kid, "ES256", "sig"),
        (generated["RS256"].kid, "RS256", "sig"),
    ]
    assert not any("d" in k or "p" in k or "k" in k for k in keys)  # no private or symmetric material
    assert SECRET_A not in response.content.decode()


def test_a_third_party_verifies_our_token_with_the_published_jwks(khala_settings, api_client, generated):
    khala_settings(SIGNING_KEYS=ring_of(generated["RS256"]))
    token = mint(api_client)["token"]
    jwks = Client().get("/.well-known/jwks.json").json()
    public = jwt.PyJWKSet.from_dict(jwks)[generated["RS256"].kid]
    claims = jwt.decode(token, public.key, algorithms=["RS256"], audience="openagents-sync")
    assert claims["iss"] == "khala"


def test_jwks_with_a_broken_ring_is_503_and_not_cached(settings, db):
    settings.KHALA = {"SIGNING_KEYS": "k1:short"}
    response = Client().get("/.well-known/jwks.json")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "jwks_unavailable"
    assert response["Cache-Control"] == "no-store"
    assert "short" not in response.content.decode()


def test_jwks_of_an_hs256_only_ring_is_empty(khala_settings, db):
    response = Client().get("/.well-known/jwks.json")
    assert response.status_code == 200 and response.json() == {"keys": []}


# --- algorithm confusion and none ---------------------------------------------------------------


def test_rs256_to_hs256_confusion_with_the_public_key_as_secret_fails(khala_settings, api_client, generated):
    """The classic attack: take the RSA public key (published!) and use its PEM as an HMAC secret."""
    key = generated["RS256"]
    khala_settings(SIGNING_KEYS=ring_of(key))
    genuine = mint(api_client)["token"]
    claims = json.loads(jwt.utils.base64url_decode(genuine.split(".")[1]))
    pem = key.verification_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (pem.decode(), b64(key.verification_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))):
        forged = craft(claims, header={"alg": "HS256", "typ": "JWT", "kid": key.kid}, secret=secret)
        assert rejection(forged) == "unsupported_alg"


def test_an_asymmetric_header_on_an_hs256_kid_fails(khala_settings, generated):
    """The reverse direction: an RS256/EdDSA header naming an HMAC kid is refused before verification."""
    from tests.tokens.crafting import valid_claims

    for alg in ASYMMETRIC:
        token = craft(valid_claims(), header={"alg": alg, "typ": "JWT", "kid": "kid-a"})
        assert rejection(token) == "unsupported_alg"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_fails_for_asymmetric_kids(khala_settings, generated, alg):
    from tests.tokens.crafting import valid_claims

    khala_settings(SIGNING_KEYS=ring_of(generated["EdDSA"]))
    token = craft(valid_claims(), header={"alg": alg, "kid": generated["EdDSA"].kid}, signature="")
    assert rejection(token) in {"unsupported_alg", "invalid_token_format"}
    token = craft(valid_claims(), header={"alg": alg, "kid": generated["EdDSA"].kid}, signature="AAAA")
    assert rejection(token) == "unsupported_alg"


def test_es256_header_on_an_eddsa_kid_fails(khala_settings, generated):
    """One algorithm per key also between asymmetric ones: an ES256-signed token cannot borrow an EdDSA kid."""
    khala_settings(SIGNING_KEYS=ring_of(generated["EdDSA"]))
    from tests.tokens.crafting import valid_claims

    token = jwt.encode(valid_claims(), generated["ES256"].signing_key(), algorithm="ES256",
                       headers={"kid": generated["EdDSA"].kid})
    assert rejection(token) == "unsupported_alg"
