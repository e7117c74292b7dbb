"""Run one documentation block as a reader would, and watch its output for a live update.

A block passes when it either

- prints that it is live (a line ``live`` or the CLI's ``[live]``), after which the test makes an
  authority write and the block must print that write's run id (its first live update), or
- runs to the end with status 0 (a one-shot command such as a ``curl``).

Shell blocks run under ``bash -e -o pipefail`` from the repository root with ``.venv/bin`` on
``PATH``; Python blocks with this interpreter, and JavaScript blocks as an ES module in a scratch
project where ``@khala/client`` and ``ws`` resolve to the repository's package. Every block runs in
its own process group, which is killed afterwards (a block may start ``khala tail &``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.servers import REPO_ROOT, VENV_BIN

LIVE_LINE = re.compile(r"^\[?live\]?\b")
# Lines that mean a step failed even if the block went on (a background command, a logged error).
# Not anchored: a curl answer without a trailing newline runs into the next command's line.
FAILURE_LINES = re.compile(r"Traceback \(most recent call last\)|curl: \(\d+\)|khala: error:|^([\w.]+\.)?\w*Error: ", re.M)


class BlockProcess:
    def __init__(self, argv, cwd, env):
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.eof = False
        self.process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.eof = True
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until ``predicate(lines)`` holds or the output ends; True if it held."""
        with self.changed:
            self.changed.wait_for(lambda: predicate(self.lines) or self.eof, timeout=timeout)
            return predicate(self.lines)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=5)
                if sig is signal.SIGTERM:
                    os.killpg(self.process.pid, signal.SIGKILL)  # a background child may linger
            except (subprocess.TimeoutExpired, ProcessLookupError):
                continue


def block_environment(server, state_dir: Path) -> dict:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(KHALA_URL=server.url, KHALA_API_TOKEN=server.api_token, T=server.api_token,
               KHALA_STATE_DIR=str(state_dir), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
               PYTHONUNBUFFERED="1")
    return env


def start_block(block, server, workdir: Path, *, js_client: Path | None = None, python: str | None = None) -> BlockProcess:
    """Start ``block``. ``python`` runs Python blocks (default: this interpreter); a JavaScript
    block runs in ``workdir``, which either already has a ``node_modules`` (an installed package)
    or gets one linking ``@khala/client`` to ``js_client`` and ``ws`` to its dependency."""
    code = block.for_server(server.host_port)
    env = block_environment(server, workdir / "state")
    if block.language == "sh":
        return BlockProcess(["bash", "-e", "-o", "pipefail", "-c", code], REPO_ROOT, env)
    if block.language == "python":
        script = workdir / "block.py"
        script.write_text(code)
        return BlockProcess([python or sys.executable, str(script)], workdir, env)
    modules = workdir / "node_modules"
    if js_client is not None:
        (modules / "@khala").mkdir(parents=True)
        (modules / "@khala" / "client").symlink_to(js_client)
        (modules / "ws").symlink_to(js_client / "node_modules" / "ws")
    assert (modules / "@khala" / "client").exists(), f"{workdir} has no @khala/client"
    script = workdir / "block.mjs"
    script.write_text(code)
    return BlockProcess(["node", str(script)], workdir, env)


def run_block(block, server, workdir: Path, *, timeout: float = 60.0, **start) -> str:
    """Run ``block`` against ``server`` (see the module docstring); the output, or AssertionError."""
    process = start_block(block, server, workdir, **start)
    try:
        live = process.wait_for(lambda lines: any(LIVE_LINE.match(line) for line in lines), timeout)
        if live:
            run_id = server.write_run()
            shown = process.wait_for(lambda lines: any(run_id in line for line in lines), timeout)
            assert shown, f"{block.name}: live, but never printed the update for run {run_id}:\n{process.output}"
        else:
            assert process.eof, f"{block.name}: neither live nor finished within {timeout}s:\n{process.output}"
            assert process.process.wait(timeout=timeout) == 0, f"{block.name} failed:\n{process.output}"
        returncode = process.process.poll()
        assert returncode in (None, 0), f"{block.name} exited with {returncode}:\n{process.output}"
        failure = FAILURE_LINES.search(process.output)
        assert failure is None, f"{block.name} printed an error ({failure.group(0)!r}):\n{process.output}"
        return process.output
    finally:
        process.kill()
