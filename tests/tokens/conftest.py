"""Fixtures of the tokens tests: a known keyring, users with API tokens."""

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.tokens.crafting import KEYS


@pytest.fixture
def khala_settings(settings):
    """Set Khala keys on top of the defaults; returns a function taking overrides."""

    def apply(**overrides):
        settings.KHALA = {**getattr(settings, "KHALA", {}), "SIGNING_KEYS": KEYS, **overrides}
        return settings.KHALA

    apply()
    return apply


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user(username="alice", password="pw-alice-123")


@pytest.fixture
def api_client(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client
