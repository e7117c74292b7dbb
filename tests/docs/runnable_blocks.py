"""Find the code blocks a Markdown page marks runnable (pure: text in, blocks out).

The convention: an HTML comment ``<!-- runnable -->`` on the line right before a fenced block
(invisible when the page is rendered). The fence's info string says how the block runs:
``sh``/``bash``/``shell``, ``python``/``py`` or ``js``/``javascript``. A marker that is not
followed by a fence, or a fence in another language, is an error rather than a silently skipped
block, so a typo cannot turn a doc test off.

Blocks are written for the default server, ``127.0.0.1:8000``; ``for_server`` points them at the
test's server instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKER = re.compile(r"^\s*<!--\s*runnable\s*-->\s*$")
FENCE_OPEN = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
LANGUAGES = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "py": "python",
             "js": "js", "javascript": "js", "mjs": "js"}
DEFAULT_SERVER = "127.0.0.1:8000"


class DocFormatError(ValueError):
    """A ``<!-- runnable -->`` marker the extractor cannot honour; the message names the line."""


@dataclass(frozen=True)
class Block:
    path: str
    line: int  # 1-based line of the opening fence
    language: str  # "sh", "python" or "js"
    code: str

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line}:{self.language}"

    def for_server(self, host_port: str) -> str:
        return self.code.replace(DEFAULT_SERVER, host_port)


def runnable_blocks(text: str, path: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if not MARKER.match(lines[i]):
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        opening = FENCE_OPEN.match(lines[j]) if j < len(lines) else None
        if opening is None:
            raise DocFormatError(f"{path}:{i + 1}: <!-- runnable --> must be followed by a fenced code block")
        language = LANGUAGES.get(opening["info"].lower())
        if language is None:
            raise DocFormatError(f"{path}:{j + 1}: runnable block in {opening['info'] or 'no language'!r}; "
                                 f"use one of {', '.join(sorted(LANGUAGES))}")
        fence, indent = opening["fence"], len(opening["indent"])
        body = []
        k = j + 1
        while k < len(lines) and not lines[k].strip().startswith(fence):
            body.append(lines[k][indent:] if lines[k][:indent].isspace() else lines[k])
            k += 1
        if k == len(lines):
            raise DocFormatError(f"{path}:{j + 1}: runnable block is never closed")
        blocks.append(Block(path, j + 1, language, "\n".join(body) + "\n"))
        i = k + 1
    return blocks
