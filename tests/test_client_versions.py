"""The clients' versions are written once each and agree, and both speak the server's protocol.

``clients/python/khala_client/version.py`` holds the Python package's version (``pyproject.toml``
reads it) and the protocol it speaks; ``clients/js/src/version.js`` the same for JavaScript, whose
``package.json`` (and lock file) must carry the same version. One release number for both clients,
and one protocol: the server's ``sync.protocol.PROTOCOL_VERSION``.
"""

import json
import re
import tomllib

from sync.protocol import PROTOCOL_VERSION
from tests.support.servers import REPO_ROOT

PY = REPO_ROOT / "clients" / "python"
JS = REPO_ROOT / "clients" / "js"


def js_constants() -> dict:
    source = (JS / "src" / "version.js").read_text()
    return dict(re.findall(r"export const (\w+) = '([^']*)';", source))


def python_constants() -> dict:
    namespace: dict = {}
    exec((PY / "khala_client" / "version.py").read_text(), namespace)  # noqa: S102 (our own file)
    return namespace


def test_python_version_is_written_once():
    project = tomllib.loads((PY / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "khala_client.version.__version__"}
    assert not re.search(r"__version__\s*=", (PY / "khala_client" / "__init__.py").read_text())


def test_both_clients_carry_one_version():
    py_version = python_constants()["__version__"]
    js = js_constants()
    package = json.loads((JS / "package.json").read_text())
    lock = json.loads((JS / "package-lock.json").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", py_version)
    assert js["VERSION"] == package["version"] == lock["version"] == lock["packages"][""]["version"] == py_version


def test_both_clients_speak_the_servers_protocol_version():
    assert python_constants()["PROTOCOL_VERSION"] == PROTOCOL_VERSION
    assert js_constants()["PROTOCOL_VERSION"] == PROTOCOL_VERSION
