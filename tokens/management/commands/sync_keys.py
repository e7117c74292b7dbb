"""``manage.py sync_keys generate|add|promote|retire|rotate|list``: manage the signing keyring.

``--alg`` (generate, add, rotate) picks the new key's algorithm: HS256 (default), EdDSA, ES256 or
RS256. Prints the ``KHALA_SIGNING_KEYS=…`` line to deploy. Secrets are hidden unless ``--show-secrets``;
``--output FILE`` writes the full value to a 0600 file instead (for ``KHALA_SIGNING_KEYS_FILE``).
The procedure these steps implement is in docs/sync/KEY_ROTATION.md.
"""

import sys

from django.core.management.base import BaseCommand, CommandError

from tokens import keyring as kr


class Command(BaseCommand):
    help = "Generate, rotate and inspect the sync-token signing keys (KHALA_SIGNING_KEYS)."
    # This command repairs the configuration the checks complain about; it must run regardless.
    requires_system_checks = []

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        def action(name, help_text, *, needs_current=True, needs_kid=False, creates_key=False):
            sub = actions.add_parser(name, help=help_text, description=help_text)
            if creates_key:
                sub.add_argument(
                    "--alg",
                    choices=kr.ALGORITHMS,
                    default=kr.HMAC_ALGORITHM,
                    help="Algorithm of the new key (default HS256). EdDSA/ES256/RS256 keys are asymmetric: "
                    "their public half is published at /.well-known/jwks.json.",
                )
            if needs_current:
                sub.add_argument(
                    "--current",
                    help="The SIGNING_KEYS value to start from ('-' reads it from stdin). "
                    "Default: the configured value (KHALA_SIGNING_KEYS or KHALA_SIGNING_KEYS_FILE).",
                )
            if needs_kid:
                sub.add_argument("kid", help="The kid to act on.")
            if name != "list":
                sub.add_argument(
                    "--show-secrets", action="store_true", help="Print the secrets in the output line (default: hidden)."
                )
                sub.add_argument("--output", help="Write the full SIGNING_KEYS value to this file (mode 0600).")
                sub.add_argument("--force", action="store_true", help="Overwrite the --output file if it exists.")
            return sub

        action("generate", "Create a new keyring with one fresh key.", needs_current=False, creates_key=True)
        action("add", "Append a fresh key as verify-only (rotation step 1).", creates_key=True)
        action("promote", "Make KID the current signer (rotation step 2).", needs_kid=True)
        action("retire", "Remove KID from the ring (rotation step 3).", needs_kid=True)
        action(
            "rotate", "Add a fresh key as the current signer in one step; old keys stay verify-only.", creates_key=True
        )
        action("list", "List the kids of the ring and their role (current / verify-only).")

    def handle(self, *args, action, **options):
        try:
            if action == "generate":
                ring = kr.Keyring(keys=(kr.generate_key(options["alg"]),))
            else:
                current = self._current(options.get("current"))
                if action == "list":
                    self._list(current)
                    return
                if action == "add":
                    ring = kr.add_key(current, kr.generate_key(options["alg"]))
                elif action == "promote":
                    ring = kr.promote_key(current, options["kid"])
                elif action == "retire":
                    ring = kr.retire_key(current, options["kid"])
                else:
                    ring = kr.rotate_keys(current, kr.generate_key(options["alg"]))
            self._emit(ring, options)
        except kr.KeyringMisconfigured as exc:
            raise CommandError(str(exc)) from None

    def _current(self, value) -> kr.Keyring:
        if value == "-":
            value = sys.stdin.read()
        elif value is None:
            value = kr.configured_value()
        return kr.parse_signing_keys(value)

    def _list(self, ring: kr.Keyring) -> None:
        for kid, role, alg in kr.describe(ring):
            self.stdout.write(f"{kid}\t{role}\t{alg}")

    def _emit(self, ring: kr.Keyring, options) -> None:
        roles = ", ".join(f"{kid} ({alg}, {role})" for kid, role, alg in kr.describe(ring))
        if options.get("output"):
            kr.write_keys_file(options["output"], ring, overwrite=options.get("force", False))
            self.stdout.write(f"wrote the SIGNING_KEYS value to {options['output']} (mode 0600): {roles}")
            self.stdout.write(f"deploy it with KHALA_SIGNING_KEYS_FILE={options['output']}")
            return
        value = ring.to_setting() if options.get("show_secrets") else kr.masked_setting(ring)
        self.stdout.write(f"KHALA_SIGNING_KEYS={value}")
        if not options.get("show_secrets"):
            self.stderr.write("secrets hidden: re-run with --show-secrets, or --output FILE to write them to a 0600 file")
        self.stderr.write(f"keys: {roles}")
