"""The one check for text PostgreSQL cannot store, applied wherever input enters Khala.

PostgreSQL ``text`` and ``jsonb`` refuse the NUL character (``\\u0000``), and UTF-8 cannot encode a
lone UTF-16 surrogate (``\\ud800``–``\\udfff``, which JSON's ``\\u`` escapes can still produce).
Either one reaching a query fails inside the database driver, after a view has started its work,
as a 500 with a traceback. So input is checked once, at the boundary, and refused with the stable
code ``unstorable_text`` (HTTP 400) naming where the character is:

- ``StorableTextMiddleware``: the request path and every query parameter (name and value), for
  every view, before any view code runs;
- ``StorableJSONParser``: every string and key of a DRF JSON body (the default parser);
- ``check_storable``: for input read outside DRF (the ingest API's raw body).
"""

from __future__ import annotations

import re

from django.http import JsonResponse
from rest_framework.parsers import JSONParser

from khala_project.coded_errors import ApiError, CodedError, error_body

CODE = "unstorable_text"
# NUL, or a UTF-16 surrogate code point (only a lone one can be in a Python str decoded from JSON).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class UnstorableText(CodedError):
    def __init__(self, where: str, char: str):
        what = "a NUL character" if char == "\x00" else "a lone UTF-16 surrogate"
        super().__init__(CODE, f"{where} contains {what}, which cannot be stored", 400, field=where)


def find_unstorable(value, where: str = "body") -> tuple[str, str] | None:
    """``(where, character)`` of the first unstorable character in a JSON-shaped value, else None.

    ``where`` grows a JSON-pointer-like path (``body.events[2].name``) so the refusal says which
    field to fix. Keys are checked like values: jsonb stores both.
    """
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            found = _UNSTORABLE.search(item)
            if found:
                return path, found.group()
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str):
                    found = _UNSTORABLE.search(key)
                    if found:
                        return f"{path} (a key)", found.group()
                stack.append((child, f"{path}.{key}"))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{path}[{index}]") for index, child in enumerate(item))
    return None


def check_storable(value, where: str = "body") -> None:
    """Raise ``UnstorableText`` if ``value`` (a string or parsed JSON) holds an unstorable character."""
    found = find_unstorable(value, where)
    if found:
        raise UnstorableText(*found)


class StorableJSONParser(JSONParser):
    """DRF's JSON parser, refusing bodies that hold text PostgreSQL cannot store."""

    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        try:
            check_storable(data)
        except UnstorableText as exc:
            raise ApiError.from_coded(exc) from None
        return data


class StorableTextMiddleware:
    """Refuse a request whose path or query string holds unstorable text, before any view runs."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            check_storable(request.path, "path")
            for name, values in request.GET.lists():
                check_storable(name, "query parameter name")
                check_storable(values, f"query parameter {name!r}")
        except UnstorableText as exc:
            return JsonResponse(error_body(exc.code, exc.message, **exc.extra), status=exc.http_status)
        return self.get_response(request)
