"""`manage.py sync_keys` and the keyring operations behind it; rotation end to end."""

import io
import os
import stat

import pytest
from django.core.management import CommandError, call_command

from tests.tokens.crafting import NOW, SECRET_A
from tokens import issuer
from tokens import keyring as kr
from tokens.verifier import TokenRejected, verify_sync_token


def run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("sync_keys", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def deployed_value(stdout: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith("KHALA_SIGNING_KEYS=")]
    return line.removeprefix("KHALA_SIGNING_KEYS=")


# --- parsing ------------------------------------------------------------------------------


def test_parse_orders_current_first_and_hides_secrets_in_repr():
    ring = kr.parse_signing_keys(f" kid-a:{SECRET_A} , kid-b:{'b' * 32}\n")
    assert ring.kids() == ["kid-a", "kid-b"]
    assert ring.current().kid == "kid-a"
    assert ring.get("kid-b").secret == b"b" * 32
    assert ring.get("kid-z") is None
    assert SECRET_A not in repr(ring)


def test_secret_may_contain_colons():
    assert kr.parse_signing_keys("k:" + "x:" * 20).current().secret == ("x:" * 20).encode()


@pytest.mark.parametrize(
    "raw,fragment",
    [
        ("", "no signing key"),
        ("   ", "no signing key"),
        ("kid-a", "kid:secret"),
        (f"kid-a:{SECRET_A},", "entry 2 is empty"),
        (f"kid-a:{SECRET_A},kid-a:{'c' * 40}", "appears twice"),
        ("kid-a:" + "s" * 31, "needs at least 32"),
        (f"bad kid:{SECRET_A}", "kid must be"),
        (f":{SECRET_A}", "kid must be"),
    ],
)
def test_malformed_keyrings_are_refused_with_a_reason(raw, fragment):
    with pytest.raises(kr.KeyringMisconfigured) as info:
        kr.parse_signing_keys(raw)
    assert fragment in str(info.value)
    assert SECRET_A not in str(info.value)


def test_generated_keys_are_valid_and_distinct():
    first, second = kr.generate_key(now=NOW), kr.generate_key(now=NOW)
    assert first.kid.startswith("ks-20270115-") and first.kid != second.kid
    assert first.secret != second.secret and len(first.secret) >= kr.MIN_SECRET_BYTES
    ring = kr.Keyring(keys=(first, second))
    assert kr.parse_signing_keys(ring.to_setting()) == ring


def test_retiring_the_current_signer_is_refused():
    ring = kr.parse_signing_keys(f"kid-a:{SECRET_A},kid-b:{'b' * 40}")
    with pytest.raises(kr.KeyringMisconfigured, match="current signer"):
        kr.retire_key(ring, "kid-a")
    with pytest.raises(kr.KeyringMisconfigured, match="not in the ring"):
        kr.promote_key(ring, "kid-z")


# --- the command ----------------------------------------------------------------------------


def test_generate_hides_the_secret_by_default():
    out, err = run("generate")
    value = deployed_value(out)
    assert value.endswith(":<secret hidden>")
    assert "--show-secrets" in err


def test_generate_show_secrets_prints_a_deployable_line():
    out, _ = run("generate", "--show-secrets")
    ring = kr.parse_signing_keys(deployed_value(out))
    assert len(ring.keys) == 1


def test_generate_output_writes_a_private_file(tmp_path):
    path = tmp_path / "var" / "dev-signing-keys"
    out, _ = run("generate", "--output", str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ring = kr.parse_signing_keys(path.read_text())
    assert ring.current().kid in out
    assert ring.current().secret.decode() not in out
    with pytest.raises(CommandError, match="--force"):
        run("generate", "--output", str(path))
    run("generate", "--output", str(path), "--force")
    assert kr.parse_signing_keys(path.read_text()) != ring
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_list_prints_kids_and_roles_never_secrets():
    out, _ = run("list", "--current", f"kid-a:{SECRET_A},kid-b:{'b' * 40}")
    assert out.splitlines() == ["kid-a\tcurrent\tHS256", "kid-b\tverify-only\tHS256"]
    assert SECRET_A not in out


def test_list_reads_the_configured_value(khala_settings):
    out, _ = run("list")
    assert out.splitlines() == ["kid-a\tcurrent\tHS256", "kid-b\tverify-only\tHS256"]


def test_rotate_puts_a_new_key_first_and_keeps_the_old_ones():
    out, _ = run("rotate", "--current", f"kid-a:{SECRET_A}", "--show-secrets")
    ring = kr.parse_signing_keys(deployed_value(out))
    assert ring.kids()[1:] == ["kid-a"]
    assert ring.current().kid.startswith("ks-")
    assert ring.get("kid-a").secret == SECRET_A.encode()


def test_current_from_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"kid-a:{SECRET_A}\n"))
    out, _ = run("list", "--current", "-")
    assert out.splitlines() == ["kid-a\tcurrent\tHS256"]


@pytest.mark.parametrize(
    "args",
    [
        ("list", "--current", "broken"),
        ("promote", "kid-z", "--current", f"kid-a:{SECRET_A}"),
        ("retire", "kid-a", "--current", f"kid-a:{SECRET_A}"),
    ],
)
def test_failures_are_command_errors(args):
    with pytest.raises(CommandError):
        run(*args)


def test_list_with_nothing_configured_is_a_command_error(khala_settings):
    khala_settings(SIGNING_KEYS="")
    with pytest.raises(CommandError, match="no signing key"):
        run("list")


# --- rotation end to end: add (verify-only) → promote → retire --------------------------------


@pytest.mark.django_db
def test_rotation_keeps_old_tokens_valid_until_the_old_key_is_retired(khala_settings, user):
    khala_settings(SIGNING_KEYS=f"kid-old:{SECRET_A}")
    old_token = issuer.mint_sync_token(user, now=NOW)["token"]

    # 1. add the new key as verify-only: the old key still signs.
    out, _ = run("add", "--show-secrets")
    khala_settings(SIGNING_KEYS=deployed_value(out))
    new_kid = kr.load_keyring().kids()[1]
    assert issuer.mint_sync_token(user, now=NOW)["kid"] == "kid-old"

    # 2. promote it: new tokens carry the new kid, old tokens still verify.
    out, _ = run("promote", new_kid, "--show-secrets")
    khala_settings(SIGNING_KEYS=deployed_value(out))
    new_token = issuer.mint_sync_token(user, now=NOW)
    assert new_token["kid"] == new_kid
    assert verify_sync_token(old_token, now=NOW + 1).kid == "kid-old"
    assert verify_sync_token(new_token["token"], now=NOW + 1).kid == new_kid

    # 3. retire the old key: its tokens are refused with unknown_kid, new ones still verify.
    out, _ = run("retire", "kid-old", "--show-secrets")
    khala_settings(SIGNING_KEYS=deployed_value(out))
    assert kr.load_keyring().kids() == [new_kid]
    with pytest.raises(TokenRejected) as info:
        verify_sync_token(old_token, now=NOW + 1)
    assert info.value.reason == "unknown_kid"
    assert verify_sync_token(new_token["token"], now=NOW + 1).kid == new_kid
