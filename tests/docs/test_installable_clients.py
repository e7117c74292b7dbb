"""The client packages build without warnings and work from their artefacts in a clean project.

- ``python -m build`` makes a wheel and an sdist of ``clients/python``; the wheel goes into a fresh
  venv (no repository on ``sys.path``) whose ``khala`` script reports the version, and the README
  quickstart, run by that venv's interpreter, prints its first live update.
- ``npm pack`` makes the tarball of ``clients/js`` (with ``src/index.d.ts``); it is installed into a
  fresh node project, where the README quickstart prints its first live update.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile

import pytest

from tests.docs.block_runner import run_block
from tests.docs.runnable_blocks import runnable_blocks
from tests.support.servers import REPO_ROOT

pytestmark = pytest.mark.slow

PY_CLIENT = REPO_ROOT / "clients" / "python"
JS_CLIENT = REPO_ROOT / "clients" / "js"
WARNING = re.compile(r"warn|deprecat", re.I)


def quickstart(doc: str, language: str):
    (block,) = [b for b in runnable_blocks((REPO_ROOT / doc).read_text(), doc) if b.language == language]
    return block


def run(argv, cwd, env=None, timeout=600) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{output}"
    return output


def test_python_wheel_and_sdist_build_cleanly_and_the_wheel_works_in_a_clean_venv(docs_server, tmp_path):
    from khala_client.version import __version__

    dist = tmp_path / "dist"
    # PYTHONDONTWRITEBYTECODE makes setuptools warn that it skips byte-compiling: not the package's doing.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    output = run([sys.executable, "-m", "build", "--outdir", str(dist), str(PY_CLIENT)], REPO_ROOT, env)
    assert not WARNING.search(output), f"python -m build warned:\n{output}"
    wheel = dist / f"khala_client-{__version__}-py3-none-any.whl"
    sdist = dist / f"khala_client-{__version__}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())
    assert "khala_client/version.py" in zipfile.ZipFile(wheel).namelist()
    assert f"khala_client-{__version__}/README.md" in tarfile.open(sdist).getnames()

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)], tmp_path, env)
    assert run([str(venv / "bin" / "khala"), "--version"], tmp_path).strip() == f"khala {__version__}"
    origin = run([str(venv / "bin" / "python"), "-c", "import khala_client; print(khala_client.__file__)"], tmp_path)
    assert origin.startswith(str(venv)), origin  # the installed copy, not the repository's
    run_block(quickstart("clients/python/README.md", "python"), docs_server, tmp_path, python=str(venv / "bin" / "python"))


def test_js_tarball_packs_its_types_and_installs_into_a_clean_node_project(docs_server, tmp_path):
    version = json.loads((JS_CLIENT / "package.json").read_text())["version"]
    output = run(["npm", "pack", "--pack-destination", str(tmp_path), str(JS_CLIENT)], tmp_path)
    assert not WARNING.search(output), f"npm pack warned:\n{output}"
    tarball = tmp_path / f"khala-client-{version}.tgz"
    names = tarfile.open(tarball).getnames()
    assert {"package/src/index.d.ts", "package/src/index.js", "package/README.md"} <= set(names), names

    project = tmp_path / "app"
    project.mkdir()
    (project / "package.json").write_text(json.dumps({"name": "khala-smoke", "private": True, "type": "module"}))
    ws_version = json.loads((JS_CLIENT / "package.json").read_text())["devDependencies"]["ws"]
    run(["npm", "install", "--no-audit", "--no-fund", "--prefer-offline", str(tarball), f"ws@{ws_version}"], project)
    installed = project / "node_modules" / "@khala" / "client"
    assert not installed.is_symlink() and (installed / "src" / "index.d.ts").is_file()
    run_block(quickstart("clients/js/README.md", "js"), docs_server, project)
