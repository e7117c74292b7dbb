"""docs/sync/CAPACITY.md shows exactly what bench/capacity_model.py prints, and the model runs
without any service (it only reads the committed bench/results/*.json)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- capacity-model:begin -->\n(.*?)<!-- capacity-model:end -->", re.S)


def model_output() -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env["DATABASE_URL"] = "postgres://nobody@127.0.0.1:1/none"  # any service use would fail
    result = subprocess.run(
        [sys.executable, "bench/capacity_model.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_doc_shows_the_model_output():
    [block] = BLOCK.findall((ROOT / "docs" / "sync" / "CAPACITY.md").read_text())
    assert block == model_output(), "re-run .venv/bin/python bench/capacity_model.py and paste its output"


def test_every_prediction_row_names_a_saturating_resource_and_grows_with_load():
    rows = [line.split("|")[1:-1] for line in model_output().splitlines() if re.match(r"\| [\d,]+ \| [\d,]+ \|", line)]
    assert len(rows) == 9
    workers = {(r[0].strip(), r[1].strip()): int(r[2].split()[0].replace(",", "")) for r in rows}
    assert workers[("1,000,000", "1,000")] > workers[("100,000", "1,000")] > workers[("10,000", "1,000")] >= 1
    assert workers[("10,000", "100,000")] > workers[("10,000", "1,000")]
    assert all(r[-1].strip() for r in rows)
