"""docs/ops: the alert rules and the Grafana dashboard only use metrics that exist, and parse.

The registry check imports every app's metrics module and collects the process's Prometheus
registry; a rule or panel naming a metric nobody exports would silently never fire or stay empty.
"""

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docs" / "ops" / "alerts.yml"
DASHBOARD = ROOT / "docs" / "ops" / "grafana-khala.json"
METRIC_MODULES = ("projector.metrics", "projector.parity", "sync.metrics", "tokens.metrics", "khala_project.metrics")
METRIC_NAME = re.compile(r"\bkhala_[a-z0-9_]+\b")
STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"')  # label values such as reason="khala_missing"


def metric_names(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(STRING_LITERAL.sub('""', expr)))
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "unknown": ("",),
}


def exported_series_names() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names = set()
    for family in REGISTRY.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def alert_rules() -> list[dict]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in data["panels"] for target in panel.get("targets", [])]


def test_alert_rules_have_the_required_alerts_and_annotations():
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    # the list: lag SLO, replay errors, allocator failures, retention stalled,
    # stale-cursor spike, auth failure ratio (+ parity gate)
    assert {
        "KhalaDeliveryLagHigh",
        "KhalaReplayErrors",
        "KhalaAllocatorFailures",
        "KhalaRetentionStalled",
        "KhalaStaleCursorSpike",
        "KhalaAuthFailureRatioHigh",
        "KhalaParityMismatch",
        # the projection outbox: quarantine depth and the oldest pending entry's age
        "KhalaOutboxQuarantine",
        "KhalaOutboxBacklog",
        "KhalaProjectorWorkerDown",
    } <= names
    assert len(names) == len(rules), "alert names must be unique"
    for rule in rules:
        assert rule["expr"].strip() and rule["annotations"]["summary"], rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]


def test_alert_runbook_links_point_at_existing_sections():
    for rule in alert_rules():
        link = rule["annotations"].get("runbook")
        if not link:
            continue
        path, _, anchor = link.partition("#")
        doc = ROOT / path
        assert doc.is_file(), link
        if anchor:
            anchors = {
                re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                for line in doc.read_text().splitlines()
                if line.startswith("#")
            }
            assert anchor in anchors, link


def test_dashboard_is_well_formed():
    data = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    assert data["uid"] and data["title"]
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for panel in data["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


def test_every_khala_metric_used_by_alerts_and_dashboard_is_exported():
    exported = exported_series_names()
    used = set()
    for rule in alert_rules():
        used |= metric_names(rule["expr"])
    for expr in dashboard_exprs():
        used |= metric_names(expr)
    missing = sorted(used - exported)
    assert not missing, f"metrics referenced by docs/ops but not exported by any app: {missing}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_rules_and_the_dashboard_queries(tmp_path):
    result = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # The dashboard's queries, as recording rules, so promtool parses each PromQL expression.
    records = {
        "groups": [
            {
                "name": "grafana-khala",
                "rules": [
                    {"record": f"khala_dashboard:query{i}", "expr": expr.replace("$__rate_interval", "5m")}
                    for i, expr in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(records))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
