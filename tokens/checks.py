"""System checks of the tokens app (``manage.py check``; ``--deploy`` adds tokens.E001).

Policy: a server without a signing key still starts (health, admin and `make run`'s first boot
work) and its token endpoints answer 503, so "no key" is a Warning (W001) in ordinary checks and
an Error (E001) only under ``check --deploy``. A key that is *present but unusable* is always an
Error (E002): that is a typo in a deployment, and silently running without it would be worse.
"""

from django.core.checks import Error, Tags, Warning, register

from khala_project.conf import khala_setting
from tokens.external_issuers import IssuerMisconfigured, parse_trusted_issuers
from tokens.issuer import claims_settings_problem, scopes_problem, ttl_bounds_problem
from tokens.keyring import KeyringMisconfigured, NoSigningKey, load_keyring

_KEY_HINT = "Generate one with `manage.py sync_keys generate` and set KHALA_SIGNING_KEYS (docs/sync/KEY_ROTATION.md)."


def _keyring_issue():
    try:
        load_keyring()
    except NoSigningKey as exc:
        return "missing", str(exc)
    except KeyringMisconfigured as exc:
        return "invalid", str(exc)
    return None, None


@register(Tags.security)
def check_signing_keys(app_configs=None, **kwargs):
    state, message = _keyring_issue()
    if state == "missing":
        return [Warning(f"{message}: /api/sync/token answers 503 and every socket is refused.", hint=_KEY_HINT, id="tokens.W001")]
    if state == "invalid":
        return [Error(f"signing keys are unusable: {message}", hint=_KEY_HINT, id="tokens.E002")]
    return []


@register(Tags.security, deploy=True)
def check_signing_keys_deploy(app_configs=None, **kwargs):
    state, message = _keyring_issue()
    if state == "missing":
        return [Error(f"{message}: a deployment cannot mint or verify sync tokens.", hint=_KEY_HINT, id="tokens.E001")]
    return []


@register()
def check_token_settings(app_configs=None, **kwargs):
    errors = []
    problem = claims_settings_problem(
        khala_setting("TOKEN_ISSUER"), khala_setting("TOKEN_AUDIENCE"), khala_setting("TOKEN_CLAIMS_VERSION")
    )
    if problem:
        errors.append(Error(problem, id="tokens.E003"))
    problem = ttl_bounds_problem(
        khala_setting("TOKEN_TTL_SECONDS"), khala_setting("TOKEN_TTL_MIN_SECONDS"), khala_setting("TOKEN_TTL_MAX_SECONDS")
    )
    if problem:
        errors.append(Error(problem, id="tokens.E004"))
    problem = scopes_problem(khala_setting("TOKEN_DEFAULT_SCOPES"), khala_setting("TOKEN_ALLOWED_SCOPES"))
    if problem:
        errors.append(Error(problem, id="tokens.E005"))
    try:
        parse_trusted_issuers(khala_setting("TRUSTED_ISSUERS"))
    except IssuerMisconfigured as exc:
        errors.append(Error(f"{exc} (no external issuer is trusted until it is fixed)", id="tokens.E006"))
    declared = set(khala_setting("DECLARED_TOPICS") or ())
    undeclared = [s for s in khala_setting("TOKEN_ALLOWED_SCOPES") or () if s not in declared]
    if undeclared:
        errors.append(
            Warning(
                f"TOKEN_ALLOWED_SCOPES grants scopes that are not DECLARED_TOPICS: {', '.join(undeclared)}",
                hint="Such scopes never become allowed topics; declare the topic or stop granting it.",
                id="tokens.W002",
            )
        )
    return errors
