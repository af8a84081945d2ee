"""The command line as a user runs it: shared by the tests that drive ``transferkit``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m transferkit ARGS`` in a real subprocess; output captured as text."""
    return subprocess.run([sys.executable, "-m", "transferkit", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)
