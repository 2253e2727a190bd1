"""The code stays clean: ruff and strict mypy over the package, and core/ stays sans-IO."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_is_sans_io() -> None:
    forbidden = re.compile(r"^\s*(import|from)\s+(trio|socket|os|pathlib|time)\b", re.MULTILINE)
    offenders = [p.name for p in (ROOT / "jstorrent_cli" / "core").glob("*.py")
                 if forbidden.search(p.read_text())]
    assert offenders == []
