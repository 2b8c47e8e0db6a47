"""Run the whole product on the embedded default: web server, Celery workers and beat, with demo data."""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from ...models import WorkflowInstance

DEMO_USER, DEMO_PASSWORD = "admin", "workflows-demo"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def commands(port: int) -> dict[str, list[str]]:
    """The demo's processes: web, the step worker, the control worker and beat."""
    python = sys.executable
    manage = str(settings.BASE_DIR / "manage.py")
    celery = [python, "-m", "celery", "-A", "workflows_admin.celery"]
    worker = [*celery, "worker", "-l", "INFO", "--pool", "threads"]
    return {
        "web": [python, manage, "runserver", "--noreload", f"127.0.0.1:{port}"],
        # Steps and migration chunks; the control tasks (rollout ticks, samples, recovery, cleanup)
        # have a worker of their own, so busy steps never delay them.
        "worker": [*worker, "--concurrency", "2", "-Q", "celery,batches", "-n", "demo@%h"],
        "control worker": [*worker, "--concurrency", "1", "-Q", "control", "-n", "demo-control@%h"],
        "beat": [*celery, "beat", "-l", "INFO", "-s", str(settings.DATA_DIR / "celerybeat-schedule")],
    }


class Command(BaseCommand):
    help = "Migrate, seed demo data, create an admin user, and run web + workers + beat until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--instances", type=int, default=300)
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--step-seconds", type=float, default=3.0, help="How long each demo step takes")

    def handle(self, *args, **options):
        call_command("migrate", interactive=False, verbosity=0)
        # Static files are served by whitenoise from the collected, hashed copies, as in production.
        call_command("collectstatic", interactive=False, verbosity=0)
        if not WorkflowInstance.objects.exists():
            call_command("seed_demo", instances=options["instances"])
        user, created = get_user_model().objects.get_or_create(
            username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        env = {**os.environ, "RESEARCH_AGENT_STEP_SECONDS": str(options["step_seconds"]), "PYTHONUNBUFFERED": "1"}
        # SIGTERM (e.g. from a process manager) stops the children as Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
        processes = {
            name: subprocess.Popen(cmd, env=env, cwd=settings.BASE_DIR)
            for name, cmd in commands(options["port"]).items()
        }
        self.stdout.write(
            self.style.SUCCESS(
                f"\nworkflows-admin demo: http://127.0.0.1:{options['port']}/  "
                f"user '{DEMO_USER}' password '{DEMO_PASSWORD}'  (Ctrl-C stops web, workers and beat)\n"
            )
        )
        try:
            while all(p.poll() is None for p in processes.values()):
                time.sleep(0.5)
            stopped = [name for name, p in processes.items() if p.poll() is not None]
            self.stderr.write(f"{', '.join(stopped)} stopped; shutting the demo down")
        except KeyboardInterrupt:
            pass
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes.values():
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
