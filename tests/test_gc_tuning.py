"""Server processes freeze their startup heap out of the collector's full passes and measure its
pauses (``khala_project.gc_tuning``), on both servers; a process that merely imports the app
module (a test, a management command) is left alone."""

import gc
import re
import urllib.request

import pytest

from tests.support.servers import start_server


def _metrics(server) -> str:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        return response.read().decode()


def _value(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, flags=re.M)
    return float(match.group(1)) if match else None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_a_server_freezes_its_startup_heap_and_measures_collections(kind):
    server = start_server(kind)
    try:
        for _ in range(20):  # requests allocate: the young generation gets collected
            _metrics(server)
        text = _metrics(server)
    finally:
        server.stop()
    frozen = _value(text, "khala_gc_frozen_objects")
    assert frozen is not None and frozen > 50_000  # Django, the apps and the server's modules
    assert _value(text, 'khala_gc_pause_seconds_count{generation="0"}') > 0


@pytest.mark.django_db(transaction=True)
def test_the_freeze_can_be_turned_off():
    server = start_server("daphne", khala={"GC_FREEZE_AT_STARTUP": False})
    try:
        text = _metrics(server)
    finally:
        server.stop()
    assert _value(text, "khala_gc_frozen_objects") == 0


def test_importing_the_app_module_elsewhere_freezes_nothing():
    import khala_project.asgi  # noqa: F401

    assert gc.get_freeze_count() == 0
