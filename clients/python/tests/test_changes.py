"""``changed_fields``: what ``khala tail`` prints for a new document version."""

from hypothesis import given
from hypothesis import strategies as st

from khala_client.changes import MISSING, changed_fields, format_change

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


def test_changed_leaf_fields_by_dotted_path_in_new_payload_order():
    old = {"status": "queued", "updated_at": "t1", "usage": {"tokens": 1, "calls": 2}, "gone": 1, "same": [1]}
    new = {"usage": {"tokens": 5, "calls": 2}, "status": "running", "updated_at": "t2", "same": [1], "added": "x"}
    assert changed_fields(old, new) == [
        ("usage.tokens", 1, 5), ("status", "queued", "running"), ("updated_at", "t1", "t2"),
        ("added", MISSING, "x"), ("gone", 1, MISSING),
    ]


def test_a_new_document_lists_every_field_and_types_count():
    assert changed_fields(MISSING, {"a": {"b": 1}, "c": 2}) == [("a.b", MISSING, 1), ("c", MISSING, 2)]
    assert changed_fields(MISSING, 7) == [("payload", MISSING, 7)]
    assert changed_fields({"n": 1}, {"n": True}) == [("n", 1, True)]  # 1 == True in Python, not in JSON


def test_format_change():
    assert format_change("status", "queued", "running") == 'status: "queued" → "running"'
    assert format_change("added", MISSING, "x") == 'added: "x"'
    assert format_change("gone", 1, MISSING) == "gone: 1 → ∅"
    assert format_change("long", "a" * 100, 1).startswith('long: "' + "a" * 50) and "…" in format_change("long", "a" * 100, 1)


def test_a_new_empty_object_is_a_change():
    assert [(old, new) for _path, old, new in changed_fields({}, {"": {}})] == [(MISSING, {})]
    assert changed_fields({"a": 1}, {"a": 1, "meta": {}}) == [("meta", MISSING, {})]


@given(json_values, json_values)
def test_no_change_iff_equal(old, new):
    changes = changed_fields(old, new)
    assert (changes == []) == (old == new and _same_types(old, new))


def _same_types(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_types(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return type(a) is type(b)  # lists compare whole, by ==
    return type(a) is type(b)


def test_tail_line_for_new_changed_unchanged_and_pointer_documents():
    from khala_client.cli import _describe_update
    from khala_client.stores import Document

    doc = Document("t", "k", 2, {"status": "running", "n": 1}, None, 9)
    assert _describe_update(doc, MISSING) == 't k v2 @9  (new)\n  status: "running"\n  n: 1\n'
    assert _describe_update(doc, {"status": "created", "n": 1}) == 't k v2 @9\n  status: "created" → "running"\n'
    assert _describe_update(doc, {"status": "running", "n": 1}) == "t k v2 @9  (no field changed)\n"
    assert _describe_update(doc, None) == 't k v2 @9\n  payload: null → {"status":"running","n":1}\n'  # was pointer-mode
    pointer = Document("t", "k", 3, None, None, 10, hydration_required=True)
    assert _describe_update(pointer, doc.payload) == "t k v3 @10  (payload not inline)\n"
