"""Django settings for Khala.

Everything deployment-specific comes from the environment (12-factor). Khala's own knobs live in
one namespaced ``KHALA`` dict; read them through ``khala_project.conf.khala_setting`` (lazily, so
tests can use ``override_settings``). The README documents every variable.
"""

import json
import os
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# proto/ is the import root of the generated openagents.sync.v1 code (`from openagents.sync.v1
# import sync_pb2`); manage.py, daphne and uvicorn all load these settings first. pytest.ini's
# `pythonpath` does the same for tests.
if str(BASE_DIR / "proto") not in sys.path:
    sys.path.append(str(BASE_DIR / "proto"))

VAR_DIR = Path(os.environ.get("KHALA_VAR_DIR", BASE_DIR / "var"))


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


SECRET_KEY = os.environ.get("SECRET_KEY", "khala-dev-insecure-secret-key-change-me")
DEBUG = _env_bool("DEBUG", False)
ALLOWED_HOSTS = _env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")

INSTALLED_APPS = [
    "khala_project.admin_site.KhalaAdminConfig",  # django.contrib.admin with Khala's site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_prometheus",
    "channels",
    "runtime",
    "projector",
    "tokens",
    "sync",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Before anything that reads the path or query into a query (sessions, auth, the views).
    "khala_project.storable_text.StorableTextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "khala_project.urls"
ASGI_APPLICATION = "khala_project.asgi.application"
WSGI_APPLICATION = "khala_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# DATABASE_URL unset: an embedded SQLite file so `make run` works on a bare laptop. Tests refuse
# to run on it (tests/conftest.py): correctness is proven on PostgreSQL only.
# CONN_MAX_AGE stays 0: under ASGI every sync_to_async thread would otherwise keep its own
# persistent connection, so idle threads would hold PostgreSQL connections (max_connections) for
# nothing; delivery reads through its own bounded pool instead (DB_POOL_MAX_SIZE).
if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=0)}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "khala.sqlite3",
            # WAL: the WebSocket lane's reader thread (sync.journal_sqlite) reads a snapshot while a
            # writer commits. BEGIN IMMEDIATE: a transaction that reads before it writes (runtime
            # commands, the projector) takes the database write lock up front and waits for it
            # (timeout) instead of failing with "database is locked" when it later upgrades.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL"},
        }
    }

# Streaming replicas (zero or more, comma-separated URLs): extra aliases ``replica_1``, ``replica_2``…
# that only the WebSocket lane's journal reads and HTTP hydration use, each after checking that the
# replica has replayed far enough (docs/sync/REPLICAS.md). Nothing routes ORM queries to them:
# writes, watermark allocation, tokens and revocation stay on ``default``. Under pytest-django a
# replica alias mirrors the test database (no second test database is created for it).
DATABASE_REPLICA_URLS = _env_list("DATABASE_REPLICA_URLS", "")
if DATABASE_REPLICA_URLS and DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
    for _n, _url in enumerate(DATABASE_REPLICA_URLS, start=1):
        _replica = dj_database_url.parse(_url, conn_max_age=0)
        # A replica that does not answer must not hold a hydration request (or a worker) for the
        # operating system's TCP timeout: give up connecting after 2 s and read the primary.
        _replica["OPTIONS"] = {"connect_timeout": 2, **_replica.get("OPTIONS", {})}
        DATABASES[f"replica_{_n}"] = {**_replica, "TEST": {"MIRROR": "default"}}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer --------------------------------------------------------------------------
# Channel-layer messages are *hints* ("topic T is now at watermark N"); the journal is the truth.
# RedisPubSubChannelLayer costs one PUBLISH per group message whatever the member count.
# REDIS_URL may list several Redis servers, comma-separated: the hint bus shards topics across them
# (khala_project/bus.py; docs/sync/OPERATIONS.md "Redis shards"). Every process must get the same
# list in the same order. Rate limits and socket leases use the first one.
REDIS_URL = os.environ.get("REDIS_URL", "")
REDIS_URLS = [url.strip() for url in REDIS_URL.split(",") if url.strip()]
for _url in REDIS_URLS:
    if "://" not in _url:
        raise ImproperlyConfigured(f"REDIS_URL: {_url!r} is not a URL (redis://host:port/db; several: comma-separated)")
KHALA_CHANNEL_PREFIX = os.environ.get("KHALA_CHANNEL_PREFIX", "khala")
if REDIS_URLS:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": REDIS_URLS, "prefix": KHALA_CHANNEL_PREFIX},
        }
    }
else:
    # One process only: khala_project.asgi logs a warning at startup.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Auth and API ---------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # DRF's JSON parser plus the unstorable-text check (khala_project/storable_text.py).
    "DEFAULT_PARSER_CLASSES": ["khala_project.storable_text.StorableJSONParser"],
    # OpenAPI 3 schema of every HTTP API, served at /api/schema/ (docs/api/openapi.yaml).
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "khala_project.api_errors.khala_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Khala HTTP APIs",
    "DESCRIPTION": (
        "Token minting, runtime commands, projection ingest and document hydration. The WebSocket "
        "protocol is described in docs/protocol/OA_SYNC_WS_MAPPING.md. Every error has the shape "
        '{"error": {"code": <stable string>, "message": <text>, ...}}.'
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Tags from the segment after /api/ (runtime, sync, internal, khala); /.well-known keeps its own.
    "SCHEMA_PATH_PREFIX": "/api/",
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []
# The JavaScript client's ES modules, served as they are (no build step) for the /live/ page.
if (BASE_DIR / "clients" / "js" / "src").is_dir():
    STATICFILES_DIRS.append(("khala-client", BASE_DIR / "clients" / "js" / "src"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("KHALA_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- Khala ----------------------------------------------------------------------------------
# Overrides for khala_project.conf.DEFAULTS. KHALA_SETTINGS_JSON takes a JSON object for any key;
# the most common ones also have their own variable (documented in the README).
KHALA: dict = json.loads(os.environ.get("KHALA_SETTINGS_JSON", "{}") or "{}")


def _env_flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


for _env_name, _key, _cast in [
    ("KHALA_SIGNING_KEYS", "SIGNING_KEYS", str),
    ("KHALA_SIGNING_KEYS_FILE", "SIGNING_KEYS_FILE", str),
    ("KHALA_SERVICE_TOKEN", "SERVICE_TOKEN", str),
    ("KHALA_TOKEN_ISSUER", "TOKEN_ISSUER", str),
    ("KHALA_TOKEN_AUDIENCE", "TOKEN_AUDIENCE", str),
    ("KHALA_INLINE_PAYLOAD_LIMIT_BYTES", "INLINE_PAYLOAD_LIMIT_BYTES", int),
    ("KHALA_HEARTBEAT_INTERVAL_SECONDS", "HEARTBEAT_INTERVAL_SECONDS", float),
    ("KHALA_HEARTBEAT_TIMEOUT_SECONDS", "HEARTBEAT_TIMEOUT_SECONDS", float),
    ("KHALA_DB_POOL_MAX_SIZE", "DB_POOL_MAX_SIZE", int),
    ("KHALA_WEB_SYNC_ENABLED", "WEB_SYNC_ENABLED", _env_flag),
    ("KHALA_SINK_PREPARED_STATEMENTS", "SINK_PREPARED_STATEMENTS", _env_flag),
    ("KHALA_WEB_SYNC_COHORT_PERCENT", "WEB_SYNC_COHORT_PERCENT", int),
]:
    if os.environ.get(_env_name):
        KHALA[_key] = _cast(os.environ[_env_name])
