"""Concurrent writers on one results store: 4 "runs" and 2 "sweep workers" (six processes,
started together) record into one SQLite file, and the same on PostgreSQL; every run is
recorded exactly once, every analysis too, and no "database is locked" reaches anyone.

The writers call the store's own methods (what `forgetlab run` and a sweep trial call after
their recipe, through `store.record_result`), many times each, so that their transactions
overlap; no training, so the test is about the store alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forgetlab.store import ResultsStore
from tests.test_sweep_postgres import postgres_url  # noqa: F401 - the server fixture

WRITERS = {"run-0": 12, "run-1": 12, "run-2": 12, "run-3": 12, "worker-0": 12, "worker-1": 12}

WRITER = r"""
import json, sys, time
from pathlib import Path
from forgetlab.store import ResultsStore

target, name, n, root = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
(root / f"ready-{name}").touch()
while not (root / "go").exists():  # a common start once all have imported: writes overlap
    time.sleep(0.001)
store = ResultsStore(target)
for i in range(n):
    run_dir = Path(root) / f"{name}-{i}"
    summary = {"name": f"{name}-{i}", "method": "lora", "blob": "x" * 20000}
    seeds = {s: {"avg_forgetting": i / 100 + s} for s in (1, 2, 3)}
    store.record_run(run_dir, summary, {"writer": name}, seeds)
    store.record_analysis(run_dir, "cka", {"i": i}, {"value": i})
print(json.dumps({"ok": n}))
"""


def _write_at_once(target: str, root: Path) -> list[subprocess.CompletedProcess]:
    root.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, target, name, str(n), str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, n in WRITERS.items()
    ]
    deadline = time.monotonic() + 300
    while len(list(root.glob("ready-*"))) < len(WRITERS) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break  # one died on start: its stderr says why below
        time.sleep(0.05)
    (root / "go").touch()
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _check(target: str, root: Path) -> None:
    done = _write_at_once(target, root)
    for p in done:
        assert p.returncode == 0, p.stderr[-800:]
        assert "locked" not in p.stderr.lower()
        assert json.loads(p.stdout) == {"ok": WRITERS[p.args[4]]}
    store = ResultsStore(target)
    runs = store.runs()
    expected = {str((root / f"{w}-{i}").resolve()) for w, n in WRITERS.items() for i in range(n)}
    assert len(runs) == len(expected)  # each once: no lost and no doubled row
    assert {r["run_dir"] for r in runs} == expected
    analyses = store.analyses()
    assert len(analyses) == len(expected)
    assert {a["run_dir"] for a in analyses} == expected


def test_six_writers_on_one_sqlite_store(tmp_path):
    _check(str(tmp_path / "store.sqlite"), tmp_path / "runs")


@pytest.mark.usefixtures("postgres_url")
def test_six_writers_on_one_postgresql_store(postgres_url, tmp_path):  # noqa: F811
    _check(postgres_url, tmp_path / "runs")
