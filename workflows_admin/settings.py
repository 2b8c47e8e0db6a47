"""Settings from environment variables with defaults for the embedded demo (SQLite + filesystem broker).

Production sets DATABASE_URL (PostgreSQL), CELERY_BROKER_URL (Redis or RabbitMQ), DJANGO_SECRET_KEY,
DJANGO_ALLOWED_HOSTS and leaves DJANGO_DEBUG unset.
"""

import os
from pathlib import Path

import dj_database_url
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("WORKFLOWS_DATA_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG")
# The fallback key is for development only; `manage.py check --deploy` flags it (security.W009).
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-development-only-key")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_celery_beat",
    "ninja",
    "workflows_admin.workflows",
    "workflows_admin.dashboard",
    "workflows_admin.api",
    "workflows_admin.webhooks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "workflows_admin.urls"
WSGI_APPLICATION = "workflows_admin.wsgi.application"

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

# --- database --------------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{DATA_DIR / 'workflows.sqlite3'}"),
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and the worker share the file: WAL, a busy timeout and IMMEDIATE transactions
    # keep concurrent writers from failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
if os.environ.get("DATABASE_TEST_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["DATABASE_TEST_NAME"]}

# --- auth, i18n, static ------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- security (production defaults when DEBUG is off) --------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie; kept default
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if not DEBUG and env_bool("DJANGO_SECURE", default=False):
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Celery --------------------------------------------------------------------------------------
BROKER_DIR = DATA_DIR / "broker"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # How often an idle worker lists the queue folder: each task hop waits up to this long.
        "polling_interval": float(os.environ.get("CELERY_BROKER_POLLING_INTERVAL", "1")),
    }
else:
    # Redis redelivers an unacknowledged task after this many seconds (a killed worker's tasks come back).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "3600")),
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# At-least-once: acknowledge after the task ran, requeue if the worker dies; tasks are idempotent.
# Celery's Django fixup closes the database connection around every task unless this is set: a new
# PostgreSQL connection for every step, half the claim's time under py-spy. Connections are kept
# (recycled every 500 tasks) and workflows_admin.celery drops broken or expired ones per task.
CELERY_DB_REUSE_MAX = 500
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Steps go to "celery". Migration chunks get a queue of their own, which step workers also consume: a
# batch is not stuck behind thousands of queued step tasks (workers take from both queues in turn).
# Control tasks (every periodic task: rollout ticks, samples, recovery, resumers, cleanup, draft
# discard) go to "control", consumed by a worker of its own: a step backlog cannot delay a decision.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = (Queue("control"), Queue("batches"), Queue("celery"))
CONTROL_TASKS = (
    "recover_stalled_steps",
    "sample_in_flight_counts",
    "clean_up_stale_instances",
    "resume_parked_instances",
    "resume_stalled_batches",
    "discard_stale_drafts",
    "tick_rollouts",
    "sweep_auto_upgrades",
)
CELERY_TASK_ROUTES = {
    "workflows_admin.workflows.tasks.process_batch_chunk": {"queue": "batches"},
    **{f"workflows_admin.workflows.tasks.{name}": {"queue": "control"} for name in CONTROL_TASKS},
    # Deliveries themselves stay on the default queue: a receiver that times out never delays a decision.
    "workflows_admin.webhooks.tasks.resend_undelivered_webhooks": {"queue": "control"},
    "workflows_admin.api.tasks.discard_old_idempotency_keys": {"queue": "control"},
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER")

# --- the product -----------------------------------------------------------------------------------
# Modules whose module-level Workflow objects are registered at start-up.
WORKFLOWS_MODULES = env_list("WORKFLOWS_MODULES", "workflows_admin.demo.research_agent")
WORKFLOWS_MAX_CONTEXT_BYTES = int(os.environ.get("WORKFLOWS_MAX_CONTEXT_BYTES", str(1024 * 1024)))
# A claimed step whose worker stopped renewing its lease is given to another worker after this long.
WORKFLOWS_STEP_LEASE_SECONDS = int(os.environ.get("WORKFLOWS_STEP_LEASE_SECONDS", "60"))
# A pending instance untouched for this long has lost its task (a broker restart): recovery re-sends it.
WORKFLOWS_PENDING_GRACE_SECONDS = int(os.environ.get("WORKFLOWS_PENDING_GRACE_SECONDS", "300"))
# A chain of chunk tasks whose worker stopped renewing its lease (a third of it at a time) for this
# long, or whose next task is this long overdue, lost its worker or its task: the resumer (every 2 s)
# starts another in its place.
WORKFLOWS_BATCH_LEASE_SECONDS = float(os.environ.get("WORKFLOWS_BATCH_LEASE_SECONDS", "5"))
# A preview (its frozen selection) not confirmed within this many hours is discarded.
WORKFLOWS_DRAFT_HOURS = int(os.environ.get("WORKFLOWS_DRAFT_HOURS", "24"))
# A migration, rollback or cleanup over more than this many instances waits for a second user's
# approval (approve_migrations); the request expires with its preview (WORKFLOWS_DRAFT_HOURS). 0: off.
WORKFLOWS_APPROVAL_THRESHOLD = int(os.environ.get("WORKFLOWS_APPROVAL_THRESHOLD", "1000"))
# Chunks of one batch processed at once: one per worker process the batches queue has.
WORKFLOWS_BATCH_PARALLEL_CHUNKS = int(os.environ.get("WORKFLOWS_BATCH_PARALLEL_CHUNKS", "2"))
# PostgreSQL's work_mem in a chunk's transaction: a chunk's rows (1,000 agent-sized contexts are
# megabytes) pass through in-memory tables its default 4 MB spills to temporary files. Empty: the server's.
WORKFLOWS_CHUNK_WORK_MEM = os.environ.get("WORKFLOWS_CHUNK_WORK_MEM", "64MB")
# A chunk task goes on to its batch's next chunk, without a broker round trip, for this long.
WORKFLOWS_BATCH_CHAIN_SECONDS = float(os.environ.get("WORKFLOWS_BATCH_CHAIN_SECONDS", "1.0"))
# Quick consecutive steps of one instance run in one task, without a broker round trip, for this long.
WORKFLOWS_STEP_CHAIN_SECONDS = float(os.environ.get("WORKFLOWS_STEP_CHAIN_SECONDS", "1.0"))
# The newest N versions before the current one are kept warm (not retirable) as rollback targets.
WORKFLOWS_WARM_VERSIONS = int(os.environ.get("WORKFLOWS_WARM_VERSIONS", "1"))
WORKFLOWS_METRICS_TOKEN = os.environ.get("WORKFLOWS_METRICS_TOKEN", "")
# Webhooks: seconds one POST may take, attempts before giving up, and the first retry's delay (doubling).
WORKFLOWS_WEBHOOK_TIMEOUT_SECONDS = float(os.environ.get("WORKFLOWS_WEBHOOK_TIMEOUT_SECONDS", "5"))
WORKFLOWS_WEBHOOK_MAX_ATTEMPTS = int(os.environ.get("WORKFLOWS_WEBHOOK_MAX_ATTEMPTS", "8"))
WORKFLOWS_WEBHOOK_RETRY_SECONDS = float(os.environ.get("WORKFLOWS_WEBHOOK_RETRY_SECONDS", "10"))
# An Idempotency-Key's stored response is kept this long.
WORKFLOWS_IDEMPOTENCY_HOURS = int(os.environ.get("WORKFLOWS_IDEMPOTENCY_HOURS", "24"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
