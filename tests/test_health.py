import pytest
from django.test import override_settings


@pytest.mark.django_db
def test_healthz_answers(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"


@pytest.mark.django_db
def test_readyz_ok_with_real_postgres_and_redis(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"] == {"database": "ok", "channel_layer": "ok"}


@pytest.mark.django_db
def test_readyz_names_the_failing_channel_layer(client):
    # A Redis nobody listens on: the probe must answer 503 naming the channel layer, not hang.
    broken = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    with override_settings(CHANNEL_LAYERS=broken):
        from channels.layers import channel_layers

        channel_layers.backends.clear()
        try:
            response = client.get("/readyz")
        finally:
            channel_layers.backends.clear()
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["channel_layer"]
    assert body["checks"]["database"] == "ok"


def test_healthz_does_not_touch_the_database(client):
    # No django_db mark: any database access would raise here.
    assert client.get("/healthz").status_code == 200
