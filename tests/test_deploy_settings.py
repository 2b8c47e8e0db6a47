"""Production settings pass Django's deployment checks; secrets come only from the environment."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def deploy_check(**env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_check_deploy():
    result = deploy_check(
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50), DJANGO_SECURE="1", DJANGO_ALLOWED_HOSTS="workflows.example.com"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_development_key_is_flagged():
    result = deploy_check(DJANGO_SECURE="1", DJANGO_ALLOWED_HOSTS="workflows.example.com")
    assert result.returncode != 0
    assert "security.W009" in result.stdout + result.stderr


def test_no_secret_is_hard_coded_in_settings():
    text = (ROOT / "workflows_admin" / "settings.py").read_text()
    assert 'os.environ.get("DJANGO_SECRET_KEY"' in text
    assert "django-insecure-" in text  # the only literal key, flagged by check --deploy above
    assert "WORKFLOWS_METRICS_TOKEN = os.environ.get(" in text
