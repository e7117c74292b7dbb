"""khala_project.daphne_handshake: autobahn's per-connection debug text is built only when logged."""

import inspect
import re

import pytest


@pytest.fixture
def installed():
    from autobahn.websocket import protocol

    from khala_project import daphne_handshake

    daphne_handshake.install()
    return protocol


def test_autobahn_uses_pformat_only_where_the_patch_expects(installed):
    """Two log calls and ``Timings.__str__``: a new use would get a deferred object where a string
    may be needed, so an autobahn upgrade that adds one fails here."""
    source = inspect.getsource(installed)
    assert len(re.findall(r"\bpformat\(", source)) == 3
    assert "attrs=pformat(configAttrLog)" in source
    assert "transport_details=pformat(" in source
    assert "return pformat(self._timings)" in source


def test_the_debug_text_is_deferred_but_renders_the_same(installed):
    import pprint

    options = [("openHandshakeTimeout", 5, "WebSocketServerFactory"), ("autoPingInterval", 0, "WebSocketServerFactory")]
    deferred = installed.pformat(options)
    assert not isinstance(deferred, str)  # nothing built yet
    assert str(deferred) == f"{deferred}" == pprint.pformat(options)
    assert "\n{attrs}".format(attrs=deferred) == "\n" + pprint.pformat(options)


def test_timings_still_print_as_a_string(installed):
    timings = installed.Timings()
    timings.track("open")
    assert isinstance(str(timings), str) and "open" in str(timings)
