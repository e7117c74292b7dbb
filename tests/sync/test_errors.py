"""The error table: unique codes and close codes, the proto knows every code, the doc lists exactly them."""

import re
from pathlib import Path

from openagents.sync.v1 import errors_pb2
from sync.errors import ERRORS, PROTO_CODES_NOT_SENT

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "OA_SYNC_WS_MAPPING.md"


def proto_codes() -> set:
    ext = errors_pb2.error_code
    return {v.GetOptions().Extensions[ext] for v in errors_pb2.SyncErrorCode.DESCRIPTOR.values if v.number}


def test_codes_and_close_codes_are_unique():
    assert len(ERRORS) == len({spec.code for spec in ERRORS.values()})
    closing = [spec.close_code for spec in ERRORS.values() if spec.close_code is not None]
    assert len(closing) == len(set(closing))
    assert all(4000 <= code <= 4999 for code in closing)
    assert all(spec.message and spec.client_action for spec in ERRORS.values())


def test_every_code_is_a_proto_error_code():
    assert set(ERRORS) <= proto_codes()
    assert proto_codes() - set(ERRORS) == PROTO_CODES_NOT_SENT


def test_mapping_doc_lists_exactly_the_table():
    text = DOC.read_text()
    section = text.split("## 7. Error table", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| [^|]+ \| ([^|]+) \|", section, flags=re.M)
    documented = {code: close.strip() for code, close in rows}
    assert set(documented) == set(ERRORS)
    for code, spec in ERRORS.items():
        assert documented[code] == (str(spec.close_code) if spec.close_code else "—"), code
