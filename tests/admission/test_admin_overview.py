"""The admin overview shows every admission limit's setting and this process's decisions."""

import re

import pytest
from django.urls import reverse

from khala_project import ratelimit
from khala_project.ratelimit import Limiter

pytestmark = pytest.mark.django_db


def row_of(html, name):
    match = re.search(rf"<tr><td>{name}</td>(.*?)</tr>", html, re.S)
    assert match, f"no row for {name}"
    return [cell.strip() for cell in re.findall(r"<td>(.*?)</td>", match.group(1), re.S)]


def test_overview_lists_limits_with_their_settings_and_counts(admin_client, settings, clock):
    # The suite turns the socket limits off (tests/conftest.py); this page shows the defaults.
    from khala_project.conf import DEFAULTS

    settings.KHALA = {
        **getattr(settings, "KHALA", {}),
        "LIMIT_SOCKETS_PER_USER": DEFAULTS["LIMIT_SOCKETS_PER_USER"],
        "LIMIT_CONNECTS_PER_USER": [1, 10.0],
        "LIMIT_JOINS_PER_SOCKET": None,
    }
    before = row_of(admin_client.get(reverse("admin:khala_overview")).content.decode(), "connects_per_user")
    local = Limiter(None, "t", clock=clock)
    for _ in range(3):
        ratelimit.admit("connects_per_user", "user:1", limiter=local)
    html = admin_client.get(reverse("admin:khala_overview")).content.decode()
    setting, value, allowed, limited, per_process = row_of(html, "connects_per_user")
    assert setting == "<code>LIMIT_CONNECTS_PER_USER</code>" and value == "1 per 10 s"
    assert int(allowed) == int(before[2]) + 1 and int(limited) == int(before[3]) + 2
    assert int(per_process) == int(before[4]) + 3
    assert row_of(html, "joins_per_socket")[1] == "off"
    assert row_of(html, "sockets_per_user")[1] == "50 open at once"
    assert row_of(html, "token_mints_per_user")[1] == "30 per 60 s"
