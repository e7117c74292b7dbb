import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from projector.topics import ensure_v1_topics


@pytest.fixture
def topics(db):
    return ensure_v1_topics()


@pytest.fixture
def make_client(db):
    """``make_client("alice")`` -> (APIClient authenticated with a real DRF token, user)."""

    def _make(username: str):
        user = get_user_model().objects.create_user(username=username, password="pw-" + username)
        token = Token.objects.create(user=user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client, user

    return _make


@pytest.fixture
def alice(make_client):
    return make_client("alice")


@pytest.fixture
def bob(make_client):
    return make_client("bob")
