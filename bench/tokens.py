"""JWT verification cost per join, per signing algorithm: HS256, EdDSA, ES256 and RS256 side by side.

A socket join (and every HTTP hydration request) verifies its token once with
``tokens.verifier.verify_sync_token``; this measures exactly that call, in process, on distinct
tokens minted by ``tokens.issuer.issue_token`` with a ring whose current key has each algorithm.
Also reported: the signing cost per mint, and an external issuer's token (EdDSA, JWKS already
cached) to show what the issuer lookup adds. No database and no server: the figures are the
verifier's CPU, which is what a reconnect storm multiplies.

Rounds alternate the algorithms (HS256, EdDSA, ES256, RS256, external, HS256, …) so load from other
processes on a shared machine hits them alike; the figure per algorithm is the median over rounds
and the ratio is to HS256 in the same run.

    .venv/bin/python bench/tokens.py [--tokens 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "khala_project.settings")

ALGS = ("HS256", "EdDSA", "ES256", "RS256")
EXTERNAL = "EdDSA (external issuer, cached JWKS)"
EXTERNAL_ISSUER = "https://id.bench.invalid"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2000, help="distinct tokens verified per algorithm and round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported")
    args = parser.parse_args()

    import django

    django.setup()
    import jwt
    from django.test import override_settings

    from bench.harness import write_result
    from tokens import external_issuers, issuer
    from tokens import keyring as kr
    from tokens.verifier import verify_sync_token

    keys = {alg: kr.generate_key(alg) for alg in ALGS}
    external_key = kr.generate_key("EdDSA")
    users = [SimpleNamespace(pk=i) for i in range(1, args.tokens + 1)]

    def served_jwks(url, timeout):
        return {"keys": [external_key.public_jwk()]}

    external_issuers.fetch_jwks = served_jwks  # the JWKS is cached after the first token anyway
    common = {
        "TRUSTED_ISSUERS": [{"issuer": EXTERNAL_ISSUER, "audience": "bench", "jwks_url": "https://id.bench.invalid/jwks"}],
    }

    tokens: dict[str, list[str]] = {}
    sign_us: dict[str, float] = {}
    for alg in ALGS:
        with override_settings(KHALA={**common, "SIGNING_KEYS": kr.Keyring(keys=(keys[alg],)).to_setting()}):
            started = time.perf_counter()
            tokens[alg] = [issuer.issue_token(user).token for user in users]
            sign_us[alg] = (time.perf_counter() - started) / len(users) * 1e6
    template = jwt.decode(tokens["HS256"][0], options={"verify_signature": False})
    tokens[EXTERNAL] = [
        jwt.encode({**template, "iss": EXTERNAL_ISSUER, "aud": "bench", "jti": f"{i:024x}"}, external_key.signing_key(),
                   algorithm="EdDSA", headers={"kid": external_key.kid})
        for i in range(len(users))
    ]

    ring = kr.Keyring(keys=tuple(keys.values())).to_setting()
    per_round: dict[str, list[float]] = {name: [] for name in tokens}
    with override_settings(KHALA={**common, "SIGNING_KEYS": ring}):
        for name in tokens:  # warm: parse caches, the JWKS fetch, lazy imports
            verify_sync_token(tokens[name][0])
        for _ in range(args.rounds):
            for name, batch in tokens.items():
                started = time.perf_counter()
                for token in batch:
                    verify_sync_token(token)
                per_round[name].append((time.perf_counter() - started) / len(batch) * 1e6)

    base = statistics.median(per_round["HS256"])
    scenarios = {}
    print(f"{'algorithm':<40} {'verify µs/join':>15} {'× HS256':>8} {'sign µs/mint':>13} {'token bytes':>12}")
    for name, rounds in per_round.items():
        median = statistics.median(rounds)
        scenarios[name] = {
            "verify_us_per_join_median": round(median, 1),
            "verify_us_per_round": [round(r, 1) for r in rounds],
            "ratio_to_hs256": round(median / base, 2),
            "sign_us_per_mint": round(sign_us[name], 1) if name in sign_us else None,
            "token_bytes": len(tokens[name][0]),
            "verifies_per_second_one_core": round(1e6 / median),
        }
        sign = f"{sign_us[name]:.1f}" if name in sign_us else "-"
        print(f"{name:<40} {median:>15.1f} {median / base:>8.2f} {sign:>13} {len(tokens[name][0]):>12}")

    path = write_result("tokens", {"tokens_per_round": args.tokens, "rounds": args.rounds, "scenarios": scenarios})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
