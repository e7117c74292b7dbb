"""The CI skip guard (``tests/support/ci_skips.py``): with CI=true a skip fails the run unless the
test is allow-listed; without CI it stays a skip. Run on a throw-away test file in a subprocess."""

import os
import subprocess
import sys

from tests.support.servers import REPO_ROOT

PROBE = """
import pytest

@pytest.mark.skip(reason="tool missing")
def test_probe():
    pass
"""


def run_probe(tmp_path, ci: str | None, allow: str | None = None):
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO_ROOT)
    args = [sys.executable, "-m", "pytest", "-c", os.devnull, "-p", "no:cacheprovider", "-p", "no:django", "-p", "tests.support.ci_skips", "-q", str(tmp_path)]
    if allow is not None:
        (tmp_path / "conftest.py").write_text(
            "from tests.support import ci_skips\n" f"ci_skips.ALLOWED_SKIPS[{allow!r}] = 'probe: allowed on purpose'\n"
        )
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_fails_the_run_in_ci(tmp_path):
    result = run_probe(tmp_path, "true")
    assert result.returncode != 0, result.stdout
    assert "skipped in CI (Skipped: tool missing)" in result.stdout


def test_a_skip_stays_a_skip_outside_ci(tmp_path):
    result = run_probe(tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout


def test_an_allow_listed_skip_passes_in_ci(tmp_path):
    result = run_probe(tmp_path, "true", allow="test_probe.py::test_probe")
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
