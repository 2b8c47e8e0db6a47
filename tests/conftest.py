import pytest
from django.db import connection

from workflows_admin.workflows.runtime import get_registry

from . import workflows_for_tests

pytest_plugins = ["tests.worker", "tests.browser"]


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """The tests that use the database run on PostgreSQL; the rest (tests/engine/) need no database."""
    with django_db_blocker.unblock():
        if connection.vendor != "postgresql":
            pytest.exit("the tests run on PostgreSQL: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/...", 2)


@pytest.fixture(scope="session", autouse=True)
def _test_workflows():
    """The test workflows join the demo workflow in this process's registry."""
    registry = get_registry()
    registry.register(workflows_for_tests.toy)
    yield
    registry.unregister("toy")


@pytest.fixture
def synced(db):
    from workflows_admin.workflows.services.registry_sync import sync_registry

    sync_registry()


@pytest.fixture
def operator(db, django_user_model):
    return django_user_model.objects.create_superuser("operator", "op@example.com", "pw-operator-1")


@pytest.fixture(autouse=True)
def _plain_static_files(settings):
    """Production serves collected, hashed static files; tests render pages straight from static/.
    Passwords: PBKDF2 is slow on purpose (0.5 to 1 s a hash on this machine, and the tests make
    hundreds of users); what the tests check is permissions, not the hash."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
