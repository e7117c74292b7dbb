"""The OpenAPI schema of the HTTP APIs: committed, served, true to the code, and fuzzed.

- ``docs/api/openapi.yaml`` is exactly what the code generates (a view changed without its schema, or
  the schema without the view, fails here; regenerate with the command in the failure message);
- ``/api/schema/`` serves it without authentication;
- Schemathesis generates requests from it against a live daphne process (valid and invalid bodies,
  parameters and paths, authenticated as a real user, service or sync-token holder) and checks
  that no answer is a 5xx and that every answer matches the schema: its status, content type and
  body shape. Example counts are bounded so the whole run stays within a minute or two.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
import yaml
from django.core.management import call_command
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.tokens import sign, sync_claims

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "api" / "openapi.yaml"
KID, SECRET = "openapi-k1", "openapi-secret-" + "o" * 50
SERVICE_TOKEN = "openapi-service-token"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_the_committed_schema_is_what_the_code_generates(tmp_path, db):
    generated = tmp_path / "openapi.yaml"
    call_command("spectacular", file=str(generated), validate=True, fail_on_warn=True)
    assert generated.read_text() == COMMITTED.read_text(), (
        "docs/api/openapi.yaml is out of date: run `.venv/bin/python manage.py spectacular --file docs/api/openapi.yaml`"
    )


def test_the_schema_is_served_without_authentication(client, db):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    served = yaml.safe_load(response.content)
    assert served["paths"].keys() == yaml.safe_load(COMMITTED.read_text())["paths"].keys()


@pytest.fixture
def live_api(asgi_server, transactional_db):
    """A live server, a user with an API token, and the headers each security scheme needs."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from projector.topics import ensure_v1_topics

    ensure_v1_topics()
    user = get_user_model().objects.create_user(username="fuzz", password="pw-fuzz")
    api_token = Token.objects.create(user=user).key
    server = asgi_server("daphne", khala={"SIGNING_KEYS": f"{KID}:{SECRET}", "SERVICE_TOKEN": SERVICE_TOKEN})
    sync_token = sign(sync_claims(user.pk, ["runtime.run_summaries", "runtime.codex_worker_summaries"], ttl=900), kid=KID, secret=SECRET)
    headers = {
        "serviceToken": {"Authorization": f"Bearer {SERVICE_TOKEN}"},
        "syncToken": {"Authorization": f"Bearer {sync_token}"},
        "tokenAuth": {"Authorization": f"Token {api_token}"},
    }
    return server, headers


# Operations come from the committed schema (the first test proves it is the code's); requests go to
# the live server.
OPERATIONS = [result.ok() for result in schemathesis.openapi.from_path(COMMITTED).get_all_operations()]


def headers_for(operation, headers: dict) -> dict:
    """The credentials of the operation's first security scheme (every operation needs one)."""
    requirements = operation.definition.raw.get("security") or [{}]
    scheme = next(iter(requirements[0]), "tokenAuth")
    return headers[scheme]


@pytest.mark.slow
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_no_5xx_and_every_answer_matches_the_schema(operation, live_api):
    server, headers = live_api
    credentials = headers_for(operation, headers)

    @given(operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def fuzz(case):
        case.call_and_validate(base_url=server.http_url, headers=credentials, checks=CHECKS)

    fuzz()
