"""The WebSocket ``Origin`` gate: browsers may open the sync socket only from allowed origins.

A browser always sends ``Origin`` on a WebSocket handshake and lets any page open a socket to any
host, carrying whatever the page has (a token in the URL it was given, cookies); the Origin check is
what stops a foreign page from driving a user's sync session. Non-browser clients (the ``khala``
CLI, the SDKs, services) send no ``Origin`` and are not refused for that: the token is their proof.

``WEBSOCKET_ALLOWED_ORIGINS`` (read on every handshake, so tests and reloads see changes):
- ``None`` (default): origins whose host is in ``ALLOWED_HOSTS`` (the same-site pages, e.g. /live/);
- a list of patterns in Channels' syntax: ``"https://app.example.com"`` (scheme, host and port must
  match; the default port is implied), ``"https://.example.com"`` (the domain and its subdomains),
  ``"app.example.com"`` (any scheme and port), or ``"*"`` (any origin: the check is off).
An origin that matches nothing (``Origin: null`` from a sandboxed page included) is refused before
the handshake completes, which the client sees as HTTP 403; nothing of the app runs for it.
"""

from channels.security.websocket import OriginValidator
from django.conf import settings

from khala_project.conf import khala_setting


class BrowserOriginValidator(OriginValidator):
    def __init__(self, application):
        # Not super().__init__: the allow-list is a property read from settings on each handshake.
        self.application = application

    @property
    def allowed_origins(self) -> list[str]:
        configured = khala_setting("WEBSOCKET_ALLOWED_ORIGINS")
        if configured is None:
            return list(settings.ALLOWED_HOSTS)
        return list(configured)

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:  # no Origin header: not a browser
            return True
        return self.validate_origin(parsed_origin)
