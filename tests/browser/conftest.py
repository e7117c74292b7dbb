"""Browser suite: real daphne servers (tests.support) + Debian's headless Chromium via driver.mjs.

Needs `npm ci --prefix tests/browser` (playwright-core) and /usr/bin/chromium (`.ci/run` installs
it). `make test-browser` does both. A missing piece fails the suite with a message saying what to
install; it never skips silently.
"""

import json
import os
import queue
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.support.fixtures import asgi_server  # noqa: E402,F401  (fixture re-export; pytest_plugins is only allowed at the top level)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHROMIUM = os.environ.get("KHALA_CHROMIUM", "/usr/bin/chromium")
SIGNING_KID = "browser-test-k1"
SIGNING_SECRET = "browser-test-secret-" + "b" * 40
PASSWORD = "browser-password-123"
# Screenshots go to docs/img when KHALA_UPDATE_SCREENSHOTS=1 (to refresh the committed ones),
# else to the test's tmp dir so `make test` leaves the work tree clean.
UPDATE_SCREENSHOTS = os.environ.get("KHALA_UPDATE_SCREENSHOTS") == "1"


class BrowserDriver:
    """One Chromium (driver.mjs) answering one JSON command per line."""

    def __init__(self):
        if not Path(CHROMIUM).exists():
            pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium (or set KHALA_CHROMIUM)")
        if not (HERE / "node_modules" / "playwright-core").is_dir():
            pytest.fail("playwright-core missing: npm ci --prefix tests/browser")
        self.proc = subprocess.Popen(
            ["node", str(HERE / "driver.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._next(60)
        assert ready.get("ready"), ready

    def _read(self):
        for line in self.proc.stdout:
            self.replies.put(json.loads(line))
        self.replies.put({"ok": False, "error": "driver exited", "stderr": self.proc.stderr.read()[-4000:]})

    def _next(self, timeout):
        try:
            return self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"browser driver did not answer within {timeout} s") from None

    def send(self, cmd: str, *, timeout: float = 60, **args) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        reply = self._next(timeout)
        if not reply.get("ok"):
            console = ""
            if cmd != "console" and self.proc.poll() is None:
                console = "\n".join(self.send("console").get("messages", [])[-20:])
            raise AssertionError(f"browser {cmd} failed: {reply.get('error')} {reply.get('stderr', '')}\n{console}")
        return reply

    def wait_text(self, selector: str, text: str, timeout_s: float) -> float:
        """Wait until ``text`` appears inside ``selector``; return the seconds it took."""
        reply = self.send("wait_text", selector=selector, text=text, timeout_ms=int(timeout_s * 1000), timeout=timeout_s + 30)
        return reply["elapsed_ms"] / 1000

    def close(self):
        if self.proc.poll() is None:
            try:
                self.send("close", timeout=15)
            except AssertionError:
                pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=5)


@pytest.fixture
def browser():
    driver = BrowserDriver()
    yield driver
    driver.close()


@pytest.fixture
def screenshot_dir(tmp_path):
    if UPDATE_SCREENSHOTS:
        path = ROOT / "docs" / "img"
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path


@pytest.fixture
def topics(transactional_db):
    from projector.topics import ensure_v1_topics

    ensure_v1_topics()


@pytest.fixture
def signing_settings(settings):
    settings.KHALA = {**getattr(settings, "KHALA", {}), "SIGNING_KEYS": f"{SIGNING_KID}:{SIGNING_SECRET}"}
    return settings.KHALA


@pytest.fixture
def user(topics, django_user_model):
    from rest_framework.authtoken.models import Token

    user = django_user_model.objects.create_user("viewer", password=PASSWORD)
    user.api_token = Token.objects.create(user=user).key
    return user


def api_post(base_url: str, path: str, token: str, body: dict) -> dict:
    request = urllib.request.Request(
        base_url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status in (200, 201), response.status
        return json.loads(response.read())
