"""Atelier's one settings module, driven by environment variables.

The embedded default (no variables set) runs on one machine with SQLite, the kombu filesystem broker
and local disk under ``var/``. Production (``ATELIER_PRODUCTION=1``) requires a real secret key and
allowed hosts, and passes ``manage.py check --deploy`` with no warnings.

Every helper below fails loudly on a malformed value: a typo in an environment variable stops the
process at start-up with a message naming the variable, instead of silently falling back.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
from csp.constants import NONCE, NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    """Return the variable ``name`` or ``default`` when it is unset."""
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    """Return the variable ``name`` read as a boolean (1/0, true/false, yes/no, on/off)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use 1/0, true/false, yes/no or on/off.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    """Return the variable ``name`` read as an integer, refusing values below ``minimum``."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from error
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    return value


def env_json(name: str, default: Any) -> Any:
    """A JSON value from the environment (e.g. the worker pools), or ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} must be JSON: {error}") from error


def env_list(name: str, default: list[str]) -> list[str]:
    """Return the variable ``name`` read as a comma-separated list (blank items dropped)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


PRODUCTION = env_bool("ATELIER_PRODUCTION", False)
DEBUG = env_bool("DEBUG", not PRODUCTION)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when ATELIER_PRODUCTION=1.")

# Everything the studio writes (database file, broker folders, uploads, models, runs) lives here.
DATA_DIR = Path(env_str("ATELIER_DATA_DIR", str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """The secret key: from the environment, or generated once into DATA_DIR for the embedded default."""
    key = os.environ.get("SECRET_KEY")
    if key:
        if PRODUCTION and (len(key) < 50 or len(set(key)) < 5):
            raise ImproperlyConfigured("SECRET_KEY must be at least 50 characters with 5 distinct ones.")
        return key
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY is required when ATELIER_PRODUCTION=1.")
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(64))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "testserver"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS is required when ATELIER_PRODUCTION=1.")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Origins allowed to call the studio from a browser across origins (Gradio included). The studio's
# own pages are same-origin and need no entry here.
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.humanize",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "csp",
    "guardian",
    "axes",
    "ninja",
    "accounts",
    "datasets_app",
    "training_app",
    "serving_app",
    "tools_app",
    "evals_app",
    "exports_app",
]

MIDDLEWARE = [
    # First: /v1 (team API keys, no session or cookies) is answered on the event loop without the page middleware.
    "serving_app.middleware.OpenAIRouteMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "accounts.middleware.TeamScopeMiddleware",
    # Last, as django-axes asks: it turns a lockout raised during authentication into a 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "studio.urls"
WSGI_APPLICATION = None

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
                "csp.context_processors.nonce",
                "accounts.context_processors.studio_shell",
            ],
            # The charts every app draws and member-written Markdown (sanitized); libraries here rather than
            # "studio" as an app, whose static folder STATICFILES_DIRS already lists.
            "libraries": {"charts": "studio.templatetags.charts", "markdown": "studio.templatetags.markdown"},
        },
    },
]

DATABASES: dict[str, Any] = {
    "default": dj_database_url.parse(env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'atelier.sqlite3'}"))
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default serves a web process and workers at once: wait for locks, don't fail. WAL lets
    # readers go on while one writes (16 concurrent API calls queued for up to 1.6 s on the rollback journal).
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    # A connection the /v1 API's database threads keep (serving_app.database) is checked before each use, so
    # that a restarted database server costs no request. Connections used for one request are not checked.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# PostgreSQL connection pool (psycopg_pool) for the web process, where every request would otherwise
# open a new connection. Persistent connections (CONN_MAX_AGE) are not offered: under ASGI they leak.
# Off by default, because a pool must not be shared across the fork of a prefork Celery worker.
DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 0, minimum=0)
if DATABASE_POOL_SIZE and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_SIZE,
        "timeout": 10,
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "accounts:home"
LOGOUT_REDIRECT_URL = "accounts:login"

# django-guardian: no anonymous user row; object permissions only ever checked on team-filtered rows.
ANONYMOUS_USER_NAME = None
GUARDIAN_RAISE_403 = False

# django-axes: lock a username + IP pair after repeated failures; other users are unaffected.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = env_int("AXES_COOLOFF_MINUTES", 15, minimum=1) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.lockout.lockout_response"
AXES_IPWARE_PROXY_COUNT = env_int("AXES_PROXY_COUNT", 0, minimum=0) or None


def _trusted_proxies(name: str) -> list[str]:
    """Addresses or networks (CIDR) of reverse proxies, each checked, from the comma-separated ``name``."""
    proxies = env_list(name, [])
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError as error:
            raise ImproperlyConfigured(f"{name}: {proxy!r} is not an IP address or network.") from error
    return proxies


# Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto the web server believes (studio/serve.py passes
# them to uvicorn). Empty: forwarded headers are ignored and the client address is the socket's peer, so
# nobody can choose the address that the login lockout counts and the audit trail records.
TRUSTED_PROXIES = _trusted_proxies("ATELIER_TRUSTED_PROXIES")
AXES_VERBOSE = False

SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 14 * 24 * 3600, minimum=60)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(DATA_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "studio" / "static"]
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(DATA_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Oversized form posts are refused by Django before any view sees them.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 2_621_440, minimum=1024)

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "atelier@localhost")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)

# Datasets: the largest single upload, and each team's storage quota (uploads + normalized rows).
DATASET_UPLOAD_MAX_BYTES = env_int("DATASET_UPLOAD_MAX_MB", 2048, minimum=1) * 1024 * 1024
TEAM_STORAGE_QUOTA_BYTES = env_int("TEAM_STORAGE_QUOTA_GB", 50, minimum=1) * 1024**3
# Uploads stream to temporary files on disk above this size (never held whole in memory).
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_TEMP_DIR = str(DATA_DIR / "uploads")
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)

# Model folders the studio creates (the starter model) or registers.
MODELS_DIR = Path(env_str("ATELIER_MODELS_DIR", str(DATA_DIR / "models")))

# Worker pools a training job can run on. Each pool is a Celery queue served by GPU workers with the same
# hardware; ``devices`` is how many processes (GPUs) one job uses there. The embedded default is this
# machine's CPU. Production adds pools with ATELIER_TRAINING_POOLS (JSON), e.g.
#   {"h100": {"label": "1 x H100 80GB", "queue": "gpu", "accelerator": "cuda", "devices": 1,
#             "memory_gib": 80, "peak_tflops": 989, "efficiency": 0.2}}
TRAINING_POOLS: dict[str, dict[str, Any]] = env_json(
    "ATELIER_TRAINING_POOLS",
    {
        "cpu": {
            "label": "CPU (this machine)",
            "queue": "gpu",
            "accelerator": "cpu",
            "devices": 1,
            "memory_gib": env_int("ATELIER_CPU_POOL_MEMORY_GIB", 8, minimum=1),
            "peak_tflops": 0.1,
            "efficiency": 0.2,
        }
    },
)
# A worker renews a running job's lease every second; the beat reaper requeues a job whose lease
# expired (its worker died), and it resumes from the latest complete checkpoint.
TRAINING_LEASE_SECONDS = env_int("TRAINING_LEASE_SECONDS", 60, minimum=10)
# A dataset task (validation, curation) renews its claim on a version with each progress write (about once
# a second); a claim older than this belongs to a task that died, and a re-delivered task may take it over.
DATASET_TASK_LEASE_SECONDS = env_int("DATASET_TASK_LEASE_SECONDS", 300, minimum=10)
# A cancelled trainer gets this long to stop at a step boundary before its process group gets SIGTERM.
TRAINING_CANCEL_GRACE_SECONDS = env_int("TRAINING_CANCEL_GRACE_SECONDS", 5, minimum=1)
# How many times a job is restarted after its worker died before it is failed.
TRAINING_MAX_ATTEMPTS = env_int("TRAINING_MAX_ATTEMPTS", 3, minimum=1)

# Base models from the Hugging Face Hub (or a mirror): HF_ENDPOINT, and a token for gated/private repositories.
HF_ENDPOINT = env_str("HF_ENDPOINT", "")
HF_TOKEN = env_str("HF_TOKEN", "")

# --- Serving (playground, arena, deployments) -------------------------------------------------------
# The inference server (``python -m serving_app.engine``, or a vLLM OpenAI server: same protocol) that
# the playground, the arena and the /v1 API stream from. It listens on loopback; the studio writes the
# registry file it serves from (served name -> base folder + adapter folder).
INFERENCE_URL = env_str("ATELIER_INFERENCE_URL", "http://127.0.0.1:8701")
INFERENCE_REGISTRY = Path(env_str("ATELIER_INFERENCE_REGISTRY", str(DATA_DIR / "serving" / "models.json")))
# Base models served elsewhere: base model folder -> URL of an OpenAI-compatible server (a vLLM server per
# large base model in production; see README "Serving"). Requests for that base and its adapters go there,
# under the same names (base-<id>, version-<id>); everything else goes to INFERENCE_URL.
INFERENCE_ROUTES: dict[str, str] = env_json("ATELIER_INFERENCE_ROUTES", {})
# Eval runs (evals_app): requests in flight at once (vLLM batches them), and the longest answer, in tokens.
EVAL_CONCURRENCY = env_int("ATELIER_EVAL_CONCURRENCY", 8, minimum=1)
EVAL_MAX_TOKENS = env_int("ATELIER_EVAL_MAX_TOKENS", 256, minimum=1)
# The forgetting check after every training job (evals_app.forgetting), studio-wide; teams can also turn it off.
# Off, a version is checked only on demand (its page, the API) — the perplexity runs on the training queue.
EVALS_CHECK_AFTER_TRAINING = env_bool("ATELIER_CHECK_AFTER_TRAINING", True)
# The GPU kinds a deployment can be served on, for its serving cost before publishing (serving_app.costs): each
# with its memory per GPU. A deployment is placed on the kind that needs the fewest GPUs (tensor parallel: 1, 2, 4
# or 8 of them), priced at the team's GPU-hour price per GPU. Override with ATELIER_SERVING_GPUS (JSON), e.g.
#   [{"name": "L4", "memory_gib": 24}, {"name": "H100 80GB", "memory_gib": 80}]
SERVING_GPUS: list[dict[str, Any]] = env_json(
    "ATELIER_SERVING_GPUS",
    [{"name": "24 GB GPU (L4, A10)", "memory_gib": 24}, {"name": "80 GB GPU (A100, H100)", "memory_gib": 80}],
)
# Defaults for a new team API key's limits on /v1 (each key can be given its own).
API_KEY_REQUESTS_PER_MINUTE = env_int("API_KEY_REQUESTS_PER_MINUTE", 60, minimum=1)
API_KEY_MAX_TOKENS = env_int("API_KEY_MAX_TOKENS", 1024, minimum=1)
# The most new tokens the playground asks for in one answer.
PLAYGROUND_MAX_TOKENS = env_int("PLAYGROUND_MAX_TOKENS", 512, minimum=1)

# --- Tools (privileges) ----------------------------------------------------------------------------
# Hosts (names or IP literals, IPv6 without brackets) an HTTP tool may call although they are internal (loopback,
# private, link-local): an operator's decision, never a team admin's. They match a URL's host exactly, ignoring
# case: allowing 10.0.0.5 allows neither a name that resolves to it nor another spelling of it.
TOOL_ALLOWED_HOSTS = env_list("ATELIER_TOOL_ALLOWED_HOSTS", [])
# How long a tool call that waits for a person's approval may wait, and how long an approved call may then wait
# to run: a call neither approved nor run by then expires.
TOOL_APPROVAL_TTL_MINUTES = env_int("ATELIER_TOOL_APPROVAL_TTL_MINUTES", 30, minimum=1)
# Tool calls run in the tools worker (`celery -A tools_app.sandbox.worker worker -Q tools`, started by `make run`
# without the database URL), which holds no studio credentials. Only an operator who runs no such worker turns this
# on: calls then run inside the web process, next to the studio's database credentials and every tool's key.
TOOLS_EXECUTE_INLINE = env_bool("ATELIER_TOOLS_EXECUTE_INLINE", False)


def _fernet_keys(name: str) -> list[str]:
    """Fernet keys from the comma-separated ``name``: the first encrypts, all decrypt (rotation)."""
    keys = env_list(name, [])
    for position, key in enumerate(keys, start=1):
        try:
            valid = len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32
        except ValueError:  # binascii.Error and UnicodeEncodeError are ValueErrors
            valid = False
        if not valid:  # never echo the value: it is a secret
            raise ImproperlyConfigured(
                f"{name}: key {position} is not a Fernet key (32 bytes in url-safe base64); generate one with "
                '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`.'
            )
    return keys


# The keys that encrypt tool secrets (an HTTP tool's headers, a SQL tool's DSN) at rest. Empty: a key generated
# once into DATA_DIR/secrets.key (tools_app/secrets.py). To rotate, put the new key first and keep the old one
# after it until `manage.py rotate_tool_secrets` has re-encrypted every secret.
SECRETS_KEYS = _fernet_keys("ATELIER_SECRETS_KEY")

# Invitations expire after this many hours.
INVITATION_TTL_HOURS = env_int("INVITATION_TTL_HOURS", 72, minimum=1)

# --- Celery -----------------------------------------------------------------------------------------
BROKER_DIR = DATA_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    # Redis re-delivers an unacknowledged task after this long; training runs for hours, and the job
    # row's lease (not the broker) decides who runs a job, so the timeout is generous.
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 12 * 3600, minimum=60),
}
if CELERY_BROKER_URL.startswith("filesystem://"):
    for folder in ("in", "processed", "control"):
        (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        data_folder_in=str(BROKER_DIR / "in"),
        data_folder_out=str(BROKER_DIR / "in"),
        processed_folder=str(BROKER_DIR / "processed"),
        # Broadcast (worker control) messages: without this kombu writes them to ./control in the checkout.
        control_folder=str(BROKER_DIR / "control"),
        store_processed=False,
    )
# Results are only kept where a Redis is at hand; tasks report their outcome through the database.
CELERY_RESULT_BACKEND = (
    env_str("CELERY_RESULT_BACKEND", CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis://") else "") or None
)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"axes": {"level": "WARNING"}},
}

# Whether a request came over HTTPS is the ASGI scope's scheme: uvicorn takes it from X-Forwarded-Proto
# only when a proxy in ATELIER_TRUSTED_PROXIES sent it (studio/serve.py). No SECURE_PROXY_SSL_HEADER: with
# one, Django would believe that header from any client, and a direct client could pass as HTTPS.
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"

# Content-Security-Policy on every Django response (django-csp): scripts and stylesheets only from the
# studio itself or carrying the request's nonce (``{{ CSP_NONCE }}`` in templates), so text that slips into a page
# unescaped still cannot run. Inline ``style=""`` attributes stay allowed (progress bars and charts size
# and colour themselves server-side); they cannot run script. No CDN anywhere: teams run air-gapped.
# The Gradio app at /play/ gets its own policy (studio/play_security.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        "style-src-attr": [UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "frame-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# Django's pages are never framed. (The Gradio playground, which the site does frame, is served with
# ``frame-ancestors 'self'`` and ``X-Frame-Options: SAMEORIGIN``: see studio/play_security.py.)
X_FRAME_OPTIONS = "DENY"
