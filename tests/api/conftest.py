"""The HTTP API suite's fixtures: real server processes (tests.support)."""

from tests.support.fixtures import asgi_server  # noqa: F401  (fixture re-export; pytest_plugins is only allowed at the top level)
