"""A pytest plugin: in CI (``CI=true``) a skipped test FAILS the run, unless it is on the allow-list.

Why: a test that skips because its tool is missing (``promtool``, a browser) proves nothing while
the run stays green. CI installs every tool the suite needs (``.ci/run``), so a skip there means a
missing tool or a broken condition, and must be seen. Locally (no ``CI``) skips stay skips.

Loaded for every suite of the repository through ``pytest.ini`` (``-p tests.support.ci_skips``).
"""

from __future__ import annotations

import os

import pytest

# Test ids (or id prefixes) that may skip in CI, each with the reason it is acceptable. Keep it
# short: every entry is a test that CI does not actually run.
ALLOWED_SKIPS: dict[str, str] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes", "on"}


def allowed(nodeid: str) -> bool:
    return any(nodeid == entry or nodeid.startswith(entry + "[") for entry in ALLOWED_SKIPS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci() or allowed(item.nodeid):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in CI ({reason}); CI must run every test. Install what it needs in .ci/run, or add "
        f"{item.nodeid!r} with a reason to ALLOWED_SKIPS in tests/support/ci_skips.py"
    )
