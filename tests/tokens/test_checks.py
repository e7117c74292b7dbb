"""System checks of the tokens app (tokens/checks.py)."""

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.checks import Error, Warning, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from tests.tokens.crafting import SECRET_A


def token_issues(include_deployment_checks=False):
    return {
        issue.id: issue
        for issue in run_checks(include_deployment_checks=include_deployment_checks)
        if issue.id and issue.id.startswith("tokens.")
    }


def test_a_good_configuration_has_no_issues(khala_settings):
    assert token_issues(include_deployment_checks=True) == {}


def test_no_key_is_a_warning_and_a_deploy_error(khala_settings):
    khala_settings(SIGNING_KEYS="")
    issues = token_issues()
    assert set(issues) == {"tokens.W001"} and isinstance(issues["tokens.W001"], Warning)
    deploy = token_issues(include_deployment_checks=True)
    assert set(deploy) == {"tokens.W001", "tokens.E001"} and isinstance(deploy["tokens.E001"], Error)


def test_missing_keys_file_is_reported_as_no_key(khala_settings, tmp_path):
    khala_settings(SIGNING_KEYS="", SIGNING_KEYS_FILE=str(tmp_path / "absent"))
    assert "absent" in token_issues()["tokens.W001"].msg


def test_malformed_keys_are_an_error_that_blocks_commands(khala_settings):
    khala_settings(SIGNING_KEYS="kid-a:short")
    issues = token_issues()
    assert set(issues) == {"tokens.E002"}
    assert "short" not in issues["tokens.E002"].msg  # never echo a secret
    with pytest.raises(SystemCheckError):
        call_command("check")


@pytest.mark.parametrize(
    "overrides,check_id",
    [
        ({"TOKEN_AUDIENCE": ""}, "tokens.E003"),
        ({"TOKEN_TTL_MIN_SECONDS": 400}, "tokens.E004"),
        ({"TOKEN_TTL_SECONDS": 0}, "tokens.E004"),
        ({"TOKEN_DEFAULT_SCOPES": ["nope"]}, "tokens.E005"),
        ({"TOKEN_ALLOWED_SCOPES": []}, "tokens.E005"),
        ({"TOKEN_ALLOWED_SCOPES": ["runtime.run_summaries", "runtime.extra"], "TOKEN_DEFAULT_SCOPES": []}, "tokens.W002"),
    ],
)
def test_token_settings_checks(khala_settings, overrides, check_id):
    khala_settings(**overrides)
    assert set(token_issues()) == {check_id}


def _manage(*args, **env):
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env={**os.environ, "KHALA_SETTINGS_JSON": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sync_keys_runs_where_the_checks_fail():
    # The command repairs what tokens.E002 complains about, so it must not be blocked by it.
    broken = {"KHALA_SIGNING_KEYS": "kid-a:short"}
    check = _manage("check", **broken)
    assert check.returncode != 0 and "tokens.E002" in check.stderr
    listing = _manage("sync_keys", "list", "--current", f"kid-a:{SECRET_A}", **broken)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines() == ["kid-a\tcurrent\tHS256"]
