"""The WebSocket wire form of Khala's text frames, built once for a frame many sockets share.

A server-to-client text message is one unmasked WebSocket frame: ``FIN | opcode 1``, the payload
length (7 bits, or 126 + 16 bits, or 127 + 64 bits; RFC 6455 §5.2), then the UTF-8 payload. Khala
never fragments, never compresses (``khala_project.serve`` turns permessage-deflate off; daphne does
not offer it) and never masks (servers must not), so the bytes of a frame depend on its text
alone: a frame that many sockets receive can be framed once and the same ``bytes`` written to
each socket's transport, as ``websockets.broadcast`` does.

``SharedFrame`` marks such a text: the hub's live batches (``sync.follower.LiveBatch``) encode
each distinct frame once per worker — ``join_ref`` null, the rows one owner filter lets through —
and every socket that may see those rows queues the same ``SharedFrame``, which carries its
framing (``wire``, built when the frame is made). Any other text (replies, replay batches, errors:
they carry the socket's own ``join_ref`` or ``ref``) is framed for its one socket.
"""

from __future__ import annotations


class SharedFrame(str):
    """A frame text sent to several sockets, with its WebSocket frame ``wire`` built once.

    Built here rather than on first write: each socket's write then reads ``wire`` as a plain
    attribute, with no check whether it was built yet (``sync.socket_flush``)."""

    def __new__(cls, text: str):
        frame = super().__new__(cls, text)
        frame.wire = websocket_text_frame(text)
        return frame


def websocket_text_frame(text: str) -> bytes:
    """One unmasked, unfragmented WebSocket text frame carrying ``text``."""
    data = text.encode()
    length = len(data)
    if length < 126:
        return bytes((0x81, length)) + data
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + data
    return b"\x81\x7f" + length.to_bytes(8, "big") + data
