"""``/``: a small page that points a newcomer at everything the server offers, and ``/docs/``,
the repository's ``docs/`` folder served as plain text so the landing page's docs link works on a
bare checkout (the Markdown's relative links resolve under the same prefix).
"""

from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

DOCS_SUFFIXES = {".md": "text/plain; charset=utf-8", ".png": "image/png", ".json": "application/json"}


@require_GET
def landing_page(request):
    return render(request, "landing/index.html")


@require_GET
def docs_file(request, path: str):
    """One file under ``docs/`` (Markdown, images, fixtures); anything outside it is a 404."""
    root = (Path(settings.BASE_DIR) / "docs").resolve()
    target = (root / path).resolve()
    content_type = DOCS_SUFFIXES.get(target.suffix)
    if content_type is None or not target.is_relative_to(root) or not target.is_file():
        raise Http404("no such document")
    return FileResponse(target.open("rb"), content_type=content_type)
