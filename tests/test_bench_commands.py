"""bench/commands.py's summary over rounds (pure)."""

from bench.commands import medians


def run(mode, round_, rate, ratio=None, p99=None, transport="inprocess"):
    r = {"transport": transport, "mode": mode, "round": round_, "commands_per_s": rate}
    if ratio is not None:
        r["ratio_to_authority_only"] = ratio
    if p99 is not None:
        r["commit_to_subscriber"] = {"p50_ms": p99 / 2, "p99_ms": p99, "max_ms": p99, "never_seen": 0}
    return r


def test_each_mode_gets_its_median_over_the_rounds_in_order_of_first_appearance():
    runs = [
        run("authority_only", 1, 400.0, 1.0), run("outbox", 1, 300.0, 0.75, 150.0),
        run("authority_only", 2, 300.0, 1.0), run("outbox", 2, 270.0, 0.9, 170.0),
        run("authority_only", 3, 350.0, 1.0), run("outbox", 3, 290.0, 0.829, 160.0),
        run("authority_only", 1, 100.0, 1.0, transport="http"),
    ]
    rows = medians(runs)
    assert [(r["transport"], r["mode"], r["rounds"]) for r in rows] == [
        ("inprocess", "authority_only", 3), ("inprocess", "outbox", 3), ("http", "authority_only", 1)
    ]
    outbox = rows[1]
    assert outbox["ratio_to_authority_only"] == 0.829  # the median of the per-round ratios
    assert outbox["commands_per_s"] == 290.0
    assert outbox["commit_to_subscriber_p99_ms"] == 160.0 and outbox["commit_to_subscriber_p50_ms"] == 80.0
    assert rows[0]["commit_to_subscriber_p99_ms"] is None  # nothing subscribed to measure
