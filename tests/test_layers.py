"""The one-way flow checks itself: `lint-imports` (import-linter, contracts in pyproject.toml)
fails on an import that runs up the layers or closes a cycle, and names it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    report = done.stdout[done.stdout.find("Contracts") :]
    assert done.returncode == 0, report
    assert "broken" not in report.split("Contracts:")[-1].split("\n")[0].replace("0 broken", "")
