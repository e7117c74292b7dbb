"""``make run`` as a newcomer runs it: the server answers on the chosen ``PORT``, prints the demo
user's API token, serves the landing page, and ``/live/`` uses the WebSocket lane; the README
walkthrough, both client quickstarts and the client guide's example then print their first live
update against that very server.

The database is the suite's PostgreSQL test database (the suite never runs on SQLite); ``make
run``'s own steps (database check, migrate, demo user, dev signing key) run for real.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from django.conf import settings

from tests.docs.block_runner import BlockProcess, run_block
from tests.docs.conftest import DocsServer, declare_topics
from tests.docs.runnable_blocks import runnable_blocks
from tests.support.servers import REPO_ROOT
from tests.support.servers import test_database_url as database_url_of_this_run

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: BlockProcess, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.process.poll() is None, f"make run exited:\n{process.output}"
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # polling a condition (process readiness), not waiting for an event
    raise AssertionError(f"make run did not answer /healthz within {timeout}s:\n{process.output}")


def signed_in_opener(url: str, username: str, password: str):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = opener.open(url + "/live/login/").read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    body = urllib.parse.urlencode({"username": username, "password": password, "csrfmiddlewaretoken": csrf,
                                   "next": "/live/"}).encode()
    opener.open(urllib.request.Request(url + "/live/login/", data=body, headers={"Referer": url + "/live/login/"}))
    return opener


@pytest.fixture
def make_run(transactional_db):
    declare_topics()  # migrate is a no-op on the test database, whose rows the previous test flushed
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KHALA_WEB_SYNC_ENABLED", "MAKEFLAGS", "MFLAGS")}
    env.update(DATABASE_URL=database_url_of_this_run(), REDIS_URL=settings.REDIS_URL,
               KHALA_CHANNEL_PREFIX=settings.KHALA_CHANNEL_PREFIX, KHALA_LOG_LEVEL="WARNING")
    process = BlockProcess(["make", "--no-print-directory", "run", f"PORT={port}"], REPO_ROOT, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        token = re.search(r"API token: (\w+)", process.output)
        assert token, f"make run printed no API token:\n{process.output}"
        yield DocsServer(url, f"127.0.0.1:{port}", token.group(1)), process
    finally:
        process.kill()


def test_make_run_serves_the_landing_page_and_the_websocket_lane(make_run):
    server, _ = make_run
    with urllib.request.urlopen(server.url + "/") as landing:
        assert b'href="/live/"' in landing.read()
    opener = signed_in_opener(server.url, "demo", "demo-password")
    state = json.loads(opener.open(server.url + "/live/state.json").read())
    assert state["lane"] == "khala"  # the flag defaults on under make run (production: off)


def test_walkthrough_quickstarts_and_client_guide_against_make_run(make_run, js_client_installed, tmp_path):
    """The fresh-clone path: each prints its first live update from the server `make run` started."""
    server, _ = make_run
    chosen = {
        "README.md": lambda b: "khala tail" in b.code,
        "clients/python/README.md": lambda b: b.language == "python",
        "clients/js/README.md": lambda b: b.language == "js",
        "docs/protocol/CLIENT_GUIDE.md": lambda b: b.language == "python",
    }
    for doc, wanted in chosen.items():
        (block,) = [b for b in runnable_blocks((REPO_ROOT / doc).read_text(), doc) if wanted(b)]
        workdir = tmp_path / doc.replace("/", "_")
        workdir.mkdir()
        output = run_block(block, server, workdir, js_client=js_client_installed if block.language == "js" else None)
        if doc == "README.md":
            assert re.search(r"^runtime\.run_summaries runtime/run_summary:\S+ v\d+ @\d+", output, re.M), output
            assert re.search(r"^  status: ", output, re.M), output  # what changed, not the whole payload


def test_make_run_prints_a_token_example_for_its_own_port_with_scopes(make_run):
    server, process = make_run
    example = next(line for line in process.output.splitlines() if line.startswith("mint a sync token: "))
    command = example.split(": ", 1)[1]
    assert f"{server.url}/api/sync/token" in command and '"scopes": ["runtime.run_summaries"]' in command
    result = subprocess.run(["bash", "-c", command.replace("curl -s", "curl -fsS")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"]["scopes"] == ["runtime.run_summaries"]
