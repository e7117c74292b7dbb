"""The package version and the wire protocol it speaks: the one place both are written.

``pyproject.toml`` reads ``__version__`` from here (``[tool.setuptools.dynamic]``);
``PROTOCOL_VERSION`` must equal the server's ``sync.protocol.PROTOCOL_VERSION`` and the JS
client's ``src/version.js`` (checked by ``tests/test_client_versions.py``).
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = "khala.ws.v1"
