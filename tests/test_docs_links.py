"""Docs stay cross-linked: every relative Markdown link under docs/ (and in README.md) points at a
file or folder that exists inside the repository, every ``#anchor`` into a Markdown page names one
of its headings, and every page under docs/ is reachable from docs/README.md.

Anchors follow GitHub's rule: the heading's text (inline code, links, emphasis and HTML rendered
away) lowercased, characters other than letters, digits, ``_``, ``-`` and spaces dropped, spaces
turned into ``-``, and ``-1``, ``-2``… appended to repeats. Explicit ``<a id=…>``/``<a name=…>``
anchors count too. Links inside code blocks and inline code are not links."""

import re
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
INDEX = DOCS / "README.md"

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+[^>]*(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def prose_lines(text):
    """The lines of a Markdown text outside fenced code blocks."""
    fenced = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if match:
            if fenced is None:
                fenced = match.group(1)
                continue
            if match.group(1) == fenced:
                fenced = None
                continue
        if fenced is None:
            yield line


def links(text):
    """Every link target in a Markdown text (inline links, images, reference definitions)."""
    found = []
    for line in prose_lines(text):
        definition = REFERENCE_DEF.match(line)
        if definition:
            found.append(definition.group(1).strip("<>"))
            continue
        for match in INLINE_LINK.finditer(INLINE_CODE.sub("", line)):
            found.append(match.group(1).strip("<>"))
    return found


def slugify(heading):
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: keep the text
    text = text.replace("`", "")
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)  # emphasis markers, not snake_case
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    """The anchors a Markdown page defines."""
    seen = {}
    result = set()
    text = path.read_text(encoding="utf-8")
    for line in prose_lines(text):
        match = HEADING.match(line)
        if match:
            slug = slugify(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    result.update(HTML_ANCHOR.findall(text))
    return result


def resolve(source, target, root=ROOT):
    """(path or None for "this page", anchor or None) of a relative link; None for external links."""
    if not target or SCHEME.match(target) or target.startswith("//"):
        return None
    path_part, _, anchor = target.partition("#")
    path_part = path_part.split("?", 1)[0]
    if not path_part:
        return source, anchor or None
    base = root if path_part.startswith("/") else source.parent
    return (base / path_part.lstrip("/")).resolve(), anchor or None


def broken_links(source, root=ROOT):
    problems = []
    for target in links(source.read_text(encoding="utf-8")):
        resolved = resolve(source, target, root)
        if resolved is None:
            continue
        path, anchor = resolved
        if not path.is_relative_to(root.resolve()):
            problems.append(f"{target}: points outside the repository")
        elif not path.exists():
            problems.append(f"{target}: {path.relative_to(root.resolve())} does not exist")
        elif path.is_dir() and not any(child.is_file() for child in path.rglob("*")):
            # git keeps no empty folders: the link would be broken in every clone.
            problems.append(f"{target}: {path.relative_to(root.resolve())} is an empty folder")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    return problems


def reachable_pages(index, root=ROOT):
    """Markdown pages reachable from ``index`` by relative links (a folder link reaches its pages)."""
    seen = {index.resolve()}
    queue = deque([index.resolve()])
    while queue:
        page = queue.popleft()
        for target in links(page.read_text(encoding="utf-8")):
            resolved = resolve(page, target, root)
            if resolved is None or not resolved[0].exists():
                continue
            path = resolved[0]
            found = sorted(path.rglob("*.md")) if path.is_dir() else [path] if path.suffix == ".md" else []
            for child in found:
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
    return seen


CHECKED = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]


@pytest.mark.parametrize("page", CHECKED, ids=[str(p.relative_to(ROOT)) for p in CHECKED])
def test_relative_links_resolve(page):
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_docs_page_is_reachable_from_the_index():
    reachable = reachable_pages(INDEX)
    missing = [str(p.relative_to(ROOT)) for p in sorted(DOCS.rglob("*.md")) if p.resolve() not in reachable]
    assert missing == [], "link these pages from docs/README.md (directly or through a linked page)"


def test_required_docs_exist_and_are_indexed():
    index_targets = {resolve(INDEX, t)[0] for t in links(INDEX.read_text(encoding="utf-8")) if resolve(INDEX, t)}
    for name in (
        "adr/ADR-0002-proto-first-contract-governance.md",
        "adr/ADR-0003-khala-ws-only-replay-transport.md",
        "protocol/OA_SYNC_WS_MAPPING.md",
        "protocol/HASHING.md",
        "sync/SURFACES.md",
        "sync/ROADMAP.md",
        "sync/ARCHITECTURE.md",
    ):
        assert (DOCS / name).is_file(), name
        assert (DOCS / name).resolve() in index_targets, f"docs/README.md does not link {name}"


# ---- the checker itself must be able to fail ------------------------------------------------------


def test_checker_finds_broken_files_anchors_and_unreachable_pages(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "sub" / "page.md").write_text(
        "# The `sync:v1` page\n\n## Errors & codes\n\n## Errors & codes\n<a id=\"custom\"></a>\n", encoding="utf-8"
    )
    (docs / "orphan.md").write_text("# Orphan\n", encoding="utf-8")
    (docs / "empty").mkdir()
    (docs / "README.md").write_text(
        "\n".join(
            [
                "[ok](sub/page.md) [ok](sub/page.md#the-syncv1-page) [ok](sub/page.md#errors--codes-1)",
                "[ok](sub/page.md#custom) [ok](https://example.org/x.md) [ok](#index) [ok](sub/)",
                "# Index",
                "[missing](nope.md) [bad anchor](sub/page.md#errors) [outside](../../etc/passwd)",
                "`[not a link](nope2.md)`",
                "```",
                "[not a link either](nope3.md)",
                "```",
                "[empty folder](empty/)",
                "[ref]: missing-ref.md",
            ]
        ),
        encoding="utf-8",
    )
    problems = broken_links(docs / "README.md", root=tmp_path)
    assert [p.split(":")[0] for p in problems] == [
        "nope.md",
        "sub/page.md#errors",
        "../../etc/passwd",
        "empty/",
        "missing-ref.md",
    ]
    reachable = reachable_pages(docs / "README.md", root=tmp_path)
    assert (docs / "sub" / "page.md").resolve() in reachable
    assert (docs / "orphan.md").resolve() not in reachable


@pytest.mark.parametrize(
    "heading, slug",
    [
        ("5.1 `sync:subscribe`", "51-syncsubscribe"),
        ("`sync:v1` over WebSocket: the wire contract", "syncv1-over-websocket-the-wire-contract"),
        ("A. Auth failures (`KhalaAuthFailureRatioHigh`)", "a-auth-failures-khalaauthfailureratiohigh"),
        ("Why **RFC 8785** and not [JSON](x.md)", "why-rfc-8785-and-not-json"),
        ("replay_budget_exceeded", "replay_budget_exceeded"),
    ],
)
def test_slugs_follow_github(heading, slug):
    assert slugify(heading) == slug
