import pytest
from django.test import override_settings

from tests.support.fixtures import asgi_server  # noqa: F401  (fixture re-export)


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
def test_readyz_stays_ready_but_degraded_without_redis(client):
    # A Redis nobody listens on: delivery continues through the journal head check, so the worker
    # stays in the balancer (200), reports itself degraded and names the channel layer; no hang.
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
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["degraded"] == ["channel_layer"]
    assert "failing" not in body
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["channel_layer"].startswith("error: ")


def test_healthz_does_not_touch_the_database(client):
    # No django_db mark: any database access would raise here.
    assert client.get("/healthz").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_readyz_leaves_no_channel_subscribed_behind(asgi_server):
    """Each probe's round trip subscribes a fresh channel on Redis; a worker probed every few
    seconds for weeks must not keep one subscription (and one queue) per probe."""
    import urllib.request

    import redis
    from django.conf import settings

    server = asgi_server("daphne")
    client = redis.Redis.from_url(settings.REDIS_URL.split(",")[0])
    pattern = f"{settings.KHALA_CHANNEL_PREFIX}specific.*"  # new_channel()'s names; the workers' sockets have none here
    before = set(client.pubsub_channels(pattern))
    for _ in range(5):
        with urllib.request.urlopen(server.http_url + "/readyz", timeout=10) as response:
            assert response.status == 200
    assert set(client.pubsub_channels(pattern)) - before == set()
