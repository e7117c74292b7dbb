"""Every block the docs mark ``<!-- runnable -->`` runs as written against a live server.

The README walkthrough, both client quickstarts, the CLI tour and the client guide's example are
marked; each must print its first live update (see ``block_runner``). A doc that drifts from the
code (a renamed function, a missing scope, a wrong path) fails here.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.docs.block_runner import run_block
from tests.docs.runnable_blocks import runnable_blocks
from tests.support.servers import REPO_ROOT

pytestmark = pytest.mark.slow

DOCS = ["README.md", "clients/python/README.md", "clients/js/README.md", "docs/protocol/CLIENT_GUIDE.md"]
# What each page must have marked: the walkthrough and quickstarts are the point of the exercise.
REQUIRED_LANGUAGES = {
    "README.md": {"sh"},
    "clients/python/README.md": {"python", "sh"},
    "clients/js/README.md": {"js"},
    "docs/protocol/CLIENT_GUIDE.md": {"python"},
}

BLOCKS = [block for doc in DOCS for block in runnable_blocks((REPO_ROOT / doc).read_text(), doc)]


def test_each_page_marks_its_walkthrough_and_quickstarts():
    for doc, languages in REQUIRED_LANGUAGES.items():
        assert languages <= {b.language for b in BLOCKS if b.path == doc}, doc


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_runnable_block(block, docs_server, tmp_path, request):
    js_client = request.getfixturevalue("js_client_installed") if block.language == "js" else None
    run_block(block, docs_server, tmp_path, js_client=js_client)


def test_client_guide_example_recovers_from_a_stale_cursor(docs_server, tmp_path):
    """The guide's client, started from a cursor of another stream epoch, gets ``stale_cursor``,
    resyncs from a snapshot and goes live; ``live`` is printed only after a subscribe succeeded."""
    (guide,) = [b for b in BLOCKS if b.path == "docs/protocol/CLIENT_GUIDE.md"]
    fresh = '{"topic": TOPIC, "watermark": 0, "stream_epoch": None}'
    assert fresh in guide.code, "the guide's initial cursor changed; update this test's stale cursor"
    docs_server.write_run()  # the topic has a head, so a snapshot has something to return
    stale = dataclasses.replace(guide, code=guide.code.replace(fresh, '{"topic": TOPIC, "watermark": 1, "stream_epoch": "another-epoch"}'))
    output = run_block(stale, docs_server, tmp_path)
    assert output.index("live") > 0 or output.startswith("live")
