"""``manage.py sync_parity_audit``: compare authority, read models and journal (projector.parity).

Once (the default) it prints the report and fails (``CommandError``, exit 1) when the mismatch rate
is above ``--max-mismatch-rate``: a rollout gate. With ``--loop`` it audits every ``--interval``
seconds, exporting ``khala_parity_*`` on ``--metrics-port`` for Prometheus, until stopped (or for
``--cycles`` cycles, then fails if any cycle was over the threshold).

``--repair`` re-projects the entities behind the findings (``parity.repair``), audits them again
and reports; the exit status then reflects the audit AFTER the repair.
"""

import json
import random
import time

from django.core.management.base import BaseCommand, CommandError

from projector import parity


class Command(BaseCommand):
    help = "Sample documents and compare the authority with the read models and the journal (parity audit)."

    def add_arguments(self, parser):
        parser.add_argument("--sample", type=int, default=200, help="documents to sample per cycle (0-100000; default 200)")
        parser.add_argument("--loop", action="store_true", help="audit repeatedly instead of once")
        parser.add_argument("--interval", type=float, default=30.0, help="seconds between cycles with --loop (>= 1; default 30)")
        parser.add_argument("--cycles", type=int, default=0, help="with --loop: stop after this many cycles (0 = run until stopped)")
        parser.add_argument(
            "--max-mismatch-rate",
            type=float,
            default=0.01,
            help="fail (exit 1) when a cycle's mismatch rate is above this (0-1; default 0.01, the cutover gate)",
        )
        parser.add_argument(
            "--recheck-delay",
            type=float,
            default=2.0,
            help="seconds to wait before re-checking suspected mismatches (writes in flight); 0 disables (default 2)",
        )
        parser.add_argument("--seed", type=int, default=None, help="seed of the random half of the sample (reproducible runs)")
        parser.add_argument("--json", action="store_true", help="print each report as one JSON line")
        parser.add_argument(
            "--repair",
            action="store_true",
            help="re-project the entities with missing or drifted documents, then audit them again",
        )
        parser.add_argument("--metrics-port", type=int, default=0, help="serve the khala_parity_* metrics on this port (0 = off)")

    def handle(self, *args, **opts):
        sample, interval, rate = opts["sample"], opts["interval"], opts["max_mismatch_rate"]
        if not 0 <= sample <= 100_000:
            raise CommandError("--sample must be between 0 and 100000")
        if interval < 1:
            raise CommandError("--interval must be at least 1 second")
        if not 0 <= rate <= 1:
            raise CommandError("--max-mismatch-rate must be between 0 and 1")
        if opts["cycles"] < 0 or opts["recheck_delay"] < 0:
            raise CommandError("--cycles and --recheck-delay must be >= 0")
        if opts["metrics_port"]:
            from prometheus_client import start_http_server

            start_http_server(opts["metrics_port"])
        rng = random.Random(opts["seed"])
        over = []
        cycle = 0
        while True:
            cycle += 1
            report = parity.run_audit(sample, rng=rng, recheck_delay=opts["recheck_delay"])
            self._print(report, opts["json"])
            if opts["repair"] and report.mismatched_entities:
                report = self._repair(report, opts["json"])
            if report.mismatch_rate > rate:
                over.append(report)
            if not opts["loop"] or (opts["cycles"] and cycle >= opts["cycles"]):
                break
            time.sleep(interval)
        if over:
            worst = max(r.mismatch_rate for r in over)
            raise CommandError(
                f"parity mismatch rate {worst:.4f} above --max-mismatch-rate {rate} in {len(over)} of {cycle} cycle(s)"
            )

    def _repair(self, report: parity.ParityReport, as_json: bool) -> parity.ParityReport:
        progress = parity.repair(report)
        failed = ", ".join(f"{scope} {entity_id}: {error}" for scope, entity_id, error in progress.failed_entities)
        self.stdout.write(
            f"repair: entities={progress.done} written_documents={progress.written_documents} "
            f"unchanged_documents={progress.skipped_documents} failed={len(progress.failed_entities)}"
            + (f" ({failed})" if failed else "")
        )
        after = parity.audit_entities(report.mismatched_entities)
        after.sampled = report.sampled  # the rate stays relative to the audited sample
        self._print(after, as_json)
        return after

    def _print(self, report: parity.ParityReport, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps(report.as_dict(), sort_keys=True))
            return
        counts = report.counts()
        self.stdout.write(
            f"parity {report.status}: sampled={report.sampled} mismatched={report.mismatched_documents} "
            f"rate={report.mismatch_rate:.4f} max_abs_lag_drift={report.max_abs_lag_drift} "
            f"({report.duration_seconds:.2f}s)"
        )
        for key, value in counts.items():
            if value:
                self.stdout.write(f"  {key}: {value}")
        for finding in report.findings[:50]:
            self.stdout.write(
                f"  {finding.surface} {finding.reason} {finding.doc_key} expected_version={finding.expected_version} "
                f"observed_version={finding.observed_version}{' ' + finding.detail if finding.detail else ''}"
            )
        if len(report.findings) > 50:
            self.stdout.write(f"  … {len(report.findings) - 50} more")

