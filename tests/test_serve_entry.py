"""The one server entry (``python -m khala_project.serve``): every way of starting Khala goes through
it, and the argv it builds carries the transport limit the protocol documents, on both servers."""

import re
from pathlib import Path

import pytest
import yaml

from khala_project import serve
from khala_project.conf import khala_setting

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("server", serve.SERVERS)
def test_both_servers_get_the_transport_limit(server, settings):
    argv = serve.server_argv(server, host="127.0.0.1", port=8123, fd=None, proxy_headers=False, extra=[])
    limit = str(khala_setting("TRANSPORT_MAX_MESSAGE_BYTES"))
    flags = {
        "daphne": ("--websocket-max-message-size", "--websocket-max-frame-size"),
        "uvicorn": ("--ws-max-size",),
    }[server]
    for flag in flags:
        assert argv[argv.index(flag) + 1] == limit
    assert argv[-1] == serve.APPLICATION
    assert Path(argv[0]).name == server


def test_a_transport_limit_at_or_below_the_frame_limit_is_refused(settings):
    settings.KHALA = {"TRANSPORT_MAX_MESSAGE_BYTES": 1024 * 1024, "MAX_FRAME_BYTES": 1024 * 1024}
    with pytest.raises(SystemExit, match="must be above MAX_FRAME_BYTES"):
        serve.server_argv("daphne", host="h", port=1, fd=None, proxy_headers=False, extra=[])


def test_arguments_after_a_double_dash_reach_the_server():
    args = serve.parse_args(["--server", "uvicorn", "--fd", "7", "--", "--log-level", "debug"])
    argv = serve.server_argv(args.server, host=args.host, port=args.port, fd=args.fd, proxy_headers=False, extra=args.extra)
    assert argv[argv.index("--fd") + 1] == "7"
    assert argv[-3:] == ["--log-level", "debug", serve.APPLICATION]


def test_every_way_of_starting_khala_uses_the_entry():
    entry = "khala_project.serve"
    makefile = (ROOT / "Makefile").read_text()
    for target in ("serve", "serve-uvicorn"):
        recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
        assert f"-m {entry}" in recipe, target
    assert f'"-m", "{entry}"' in (ROOT / "Dockerfile").read_text()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("khala-1", "khala-2"):
        assert "command" not in compose["services"][name]  # the image's CMD: the entry
    assert f'"{entry}"' in (ROOT / "tests" / "support" / "servers.py").read_text()


@pytest.mark.parametrize(("host", "interface"), [("127.0.0.1", "127.0.0.1"), ("::", r"\:\:"), ("[::1]", r"\:\:1")])
def test_daphne_listens_with_a_deep_backlog(host, interface, settings):
    """daphne accepts a few connections per loop turn (``daphne_accepts``): the listen queue, not
    Twisted's 50, holds the rest of a storm."""
    argv = serve.server_argv("daphne", host=host, port=8123, fd=None, proxy_headers=False, extra=[])
    assert argv[argv.index("-e") + 1] == f"tcp:port=8123:interface={interface}:backlog=2048"
    assert "-b" not in argv and "-p" not in argv
