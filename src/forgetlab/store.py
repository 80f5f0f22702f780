"""The results store: an embedded SQLite index of runs across run directories.

It indexes runs for `forgetlab compare` and reports; the run directory stays the source of
truth (the store can be rebuilt from it). Run-directory files are written by
`forgetlab.atomic`.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from forgetlab.atomic import now
from forgetlab.errors import ForgetlabError

STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_dir TEXT PRIMARY KEY,
    name TEXT, method TEXT, model TEXT, tasks TEXT, seeds TEXT,
    updated TEXT, version TEXT, config TEXT, metrics TEXT
);
CREATE TABLE IF NOT EXISTS seed_runs (
    run_dir TEXT, seed INTEGER, metrics TEXT,
    PRIMARY KEY (run_dir, seed)
);
CREATE TABLE IF NOT EXISTS analyses (
    run_dir TEXT, name TEXT, params TEXT, updated TEXT, result TEXT,
    PRIMARY KEY (run_dir, name)
);
"""


class ResultsStore:
    """The SQLite index of runs. One file; safe to share between sequential processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30)
            conn.executescript(STORE_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise ForgetlabError(f"cannot open results store {self.path}: {e}") from e
        return conn

    def record_run(self, run_dir: Path, summary: dict, config: dict, seeds: dict) -> None:
        row = (
            str(Path(run_dir).resolve()),
            summary.get("name"),
            summary.get("method"),
            summary.get("model"),
            json.dumps(summary.get("tasks")),
            json.dumps(sorted(seeds)),
            now(),
            summary.get("version"),
            json.dumps(config),
            json.dumps(summary, default=str),
        )
        conn = self._connect()
        try:
            with conn:  # one transaction: the run and its seeds land together or not at all
                conn.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)", row)
                conn.execute("DELETE FROM seed_runs WHERE run_dir = ?", (row[0],))
                conn.executemany(
                    "INSERT INTO seed_runs VALUES (?,?,?)",
                    [(row[0], int(s), json.dumps(m, default=str)) for s, m in seeds.items()],
                )
        except sqlite3.Error as e:
            raise ForgetlabError(f"cannot record run in {self.path}: {e}") from e
        finally:
            conn.close()

    def runs(self) -> list[dict]:
        if not self.path.exists():
            return []
        conn = self._connect()
        try:
            cur = conn.execute(
                "SELECT run_dir, name, method, model, tasks, updated, metrics FROM runs "
                "ORDER BY updated"
            )
            return [
                {
                    "run_dir": r[0],
                    "name": r[1],
                    "method": r[2],
                    "model": r[3],
                    "tasks": json.loads(r[4]),
                    "updated": r[5],
                    "metrics": json.loads(r[6]),
                }
                for r in cur.fetchall()
            ]
        finally:
            conn.close()

    def record_analysis(self, run_dir: Path, name: str, params: dict, result: dict) -> None:
        """One analysis of one run (its newest result replaces the older one)."""
        row = (str(Path(run_dir).resolve()), name, json.dumps(params), now(), json.dumps(result))
        conn = self._connect()
        try:
            with conn:
                conn.execute("INSERT OR REPLACE INTO analyses VALUES (?,?,?,?,?)", row)
        except sqlite3.Error as e:
            raise ForgetlabError(f"cannot record analysis in {self.path}: {e}") from e
        finally:
            conn.close()

    def analyses(self, run_dir: Path | None = None) -> list[dict]:
        if not self.path.exists():
            return []
        conn = self._connect()
        try:
            query = "SELECT run_dir, name, params, updated, result FROM analyses"
            args: tuple = ()
            if run_dir is not None:
                query += " WHERE run_dir = ?"
                args = (str(Path(run_dir).resolve()),)
            return [
                {
                    "run_dir": r[0],
                    "name": r[1],
                    "params": json.loads(r[2]),
                    "updated": r[3],
                    "result": json.loads(r[4]),
                }
                for r in conn.execute(query + " ORDER BY updated", args).fetchall()
            ]
        finally:
            conn.close()
