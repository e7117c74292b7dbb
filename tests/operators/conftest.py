"""Fixtures of the operator tests: a logged-in superuser and journal writes through the sink."""

import pytest

from projector.models import V1_TOPICS, TopicSequence


@pytest.fixture
def topics(db):
    for topic in V1_TOPICS:
        TopicSequence.objects.get_or_create(topic=topic)
    return V1_TOPICS


@pytest.fixture
def superuser(db, django_user_model):
    return django_user_model.objects.create_superuser("ops", "ops@example.invalid", "ops-password-123")


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client
