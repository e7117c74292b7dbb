"""``/`` links every surface a newcomer needs; ``/docs/`` serves the docs folder and nothing else."""

import re

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_landing_page_links_live_admin_metrics_docs_and_probes():
    response = Client().get("/")
    assert response.status_code == 200
    links = set(re.findall(r'href="([^"]+)"', response.content.decode()))
    assert {"/live/", "/admin/", "/metrics", "/docs/README.md", "/healthz", "/readyz"} <= links
    for link in links - {"data:,"}:
        if link.startswith("/") and not link.startswith("/static/"):
            followed = Client().get(link)
            assert followed.status_code in (200, 302), link  # /live/ and /admin/ redirect to sign-in


def test_docs_are_served_as_text_and_relative_links_resolve():
    index = Client().get("/docs/README.md")
    assert index.status_code == 200 and index["Content-Type"].startswith("text/plain")
    body = b"".join(index.streaming_content).decode()
    first_link = re.search(r"\]\(([\w/.-]+\.md)\)", body).group(1)
    assert Client().get("/docs/" + first_link).status_code == 200


@pytest.mark.parametrize("path", ["../README.md", "..%2Fkhala_project/settings.py", "../khala_project/settings.py",
                                  "sync", "nope.md", "../.git/config"])
def test_docs_refuse_anything_outside_docs(path):
    assert Client().get("/docs/" + path).status_code == 404


def test_landing_is_get_only():
    assert Client().post("/").status_code == 405
