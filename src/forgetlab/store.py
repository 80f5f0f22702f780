"""Where results live: run directories written atomically, and an embedded SQLite index.

Every file is written to a temporary name in its final folder, flushed, then renamed over the
target, so a crash or a full disk leaves either the old file or the new one, never half of
one. The SQLite store indexes runs across directories for `forgetlab compare` and reports;
the run directory stays the source of truth (the store can be rebuilt from it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: str | Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; results are meant to be shared like any file
    the user writes, so give them the mode the umask would (e.g. 0644 / 0755)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _disk_error(path: Path, error: OSError) -> ForgetlabError:
    if error.errno == errno.ENOSPC:
        return ForgetlabError(f"disk full while writing {path}; files written before are intact")
    return ForgetlabError(f"cannot write {path}: {error.strerror or error}")


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            _usual_mode(tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise _disk_error(path, e) from e


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ForgetlabError(f"{path} not found") from e
    except json.JSONDecodeError as e:
        raise ForgetlabError(f"{path} is not valid JSON ({e})") from e


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder beside `final`; on success it replaces `final` in one rename."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        _usual_mode(tmp, directory=True)
    except OSError as e:
        raise _disk_error(final, e) from e
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(final, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ForgetlabError(f"output dir {folder} is not writable: {e.strerror or e}") from e


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
