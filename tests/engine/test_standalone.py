"""The engine is plain Python: importing it loads neither Django nor Celery (lint-imports checks the
engine's own imports; this also catches a parent package that pulls them in)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_engine_loads_neither_django_nor_celery():
    code = (
        "import sys, workflows_admin.engine\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'celery', 'kombu'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
