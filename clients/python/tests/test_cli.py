"""The ``khala`` CLI against a real server."""

import io
import json
import shutil
import subprocess
import sys

import pytest

from khala_client import cli
from khala_client.progress import ProgressBar

pytestmark = pytest.mark.slow


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_console_script_is_installed():
    exe = shutil.which("khala", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "pip install -e clients/python installs the khala console script"
    result = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("khala ")


def test_token_snapshot_tail_status(khala_env, tmp_path):
    khala_env.start()
    _, api_token, owner = khala_env.make_user("cli")
    for i in range(30):
        khala_env.write("runtime.notifications", f"n/{i:03d}", 1, {"i": i}, owner)
    common = ["--url", khala_env.url, "--api-token", api_token, "--state-dir", str(tmp_path)]

    code, out, err = run_cli(*common, "token", "--scopes", "runtime.notifications", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["token"].count(".") == 2 and data["scopes"] == ["runtime.notifications"]

    code, out, err = run_cli(*common, "snapshot", "runtime.notifications", "--limit", "7")
    assert code == 0, err
    snap = json.loads(out)
    assert snap["head_watermark"] == 30 and len(snap["documents"]) == 30
    assert snap["documents"][0]["payload"] == {"i": 0}

    code, out, err = run_cli(*common, "tail", "runtime.notifications", "--json", "--until-live")
    assert code == 0, err
    updates = [json.loads(line) for line in out.splitlines() if json.loads(line)["type"] == "update"]
    assert sorted(u["doc_key"] for u in updates) == [f"n/{i:03d}" for i in range(30)]

    khala_env.write("runtime.notifications", "n/new", 1, {"new": True}, owner)
    code, out, err = run_cli(*common, "status", "runtime.notifications", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["connection"] == "live"
    (topic,) = report["topics"]
    assert (topic["watermark"], topic["head_watermark"], topic["lag"]) == (30, 31, 1)

    # resumes from its SQLite cursor: only the new document is printed, with its fields
    code, out, err = run_cli(*common, "tail", "runtime.notifications", "--until-live")
    assert code == 0, err
    assert out.splitlines() == ["runtime.notifications n/new v1 @31  (new)", "  new: true"]

    # the next version prints what changed since the one the cache holds, not the whole payload
    khala_env.write("runtime.notifications", "n/new", 2, {"new": False, "status": "queued"}, owner)
    code, out, err = run_cli(*common, "tail", "runtime.notifications", "--until-live")
    assert code == 0, err
    assert out.splitlines() == ["runtime.notifications n/new v2 @32", "  new: true → false", '  status: "queued"']


def test_bad_api_token_is_a_clean_error(khala_env, tmp_path):
    khala_env.start()
    code, out, err = run_cli("--url", khala_env.url, "--api-token", "nope", "token")
    assert code == 1 and "khala: error:" in err and out == ""


def test_missing_api_token_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("KHALA_API_TOKEN", raising=False)
    code, _, err = run_cli("--url", "http://127.0.0.1:9", "token")
    assert code == 2 and "KHALA_API_TOKEN" in err


def test_progress_bar_draws_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    now = [0.0]
    tty = Tty()
    bar = ProgressBar(tty, 200, "catching up", clock=lambda: now[0])
    bar.update(50)
    now[0] += 1
    bar.update(200)
    assert "25.0%" in tty.getvalue() and "100.0% 200/200" in tty.getvalue()
    bar.finish()
    assert tty.getvalue().endswith("\r\x1b[K")
    plain = io.StringIO()
    ProgressBar(plain, 200).update(100)
    assert plain.getvalue() == ""
