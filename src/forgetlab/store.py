"""The results store: an index of runs across run directories, on SQLAlchemy.

A path is an SQLite file (the default, `runs/forgetlab.sqlite`); any SQLAlchemy URL
(`postgresql+psycopg://user@host/db`, `sqlite:///abs/path.sqlite`) puts the index on a server,
so `forgetlab compare --store URL` works from every machine of a sweep. The tables
(`runs`, `seed_runs`, `analyses`) and their columns are those of the earlier sqlite3 store,
so older store files open unchanged.

It indexes runs for `forgetlab compare` and reports; the run directory stays the source of
truth (the store can be rebuilt from it). Run-directory files are written by
`forgetlab.atomic`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.pool import NullPool

from forgetlab.atomic import now
from forgetlab.errors import ForgetlabError

if TYPE_CHECKING:
    from forgetlab.recipe.run import RunResult

_META = sa.MetaData()
RUNS = sa.Table(
    "runs",
    _META,
    sa.Column("run_dir", sa.Text, primary_key=True),
    *(sa.Column(c, sa.Text) for c in ("name", "method", "model", "tasks", "seeds")),
    *(sa.Column(c, sa.Text) for c in ("updated", "version", "config", "metrics")),
)
SEED_RUNS = sa.Table(
    "seed_runs",
    _META,
    sa.Column("run_dir", sa.Text, primary_key=True),
    sa.Column("seed", sa.Integer, primary_key=True),
    sa.Column("metrics", sa.Text),
)
ANALYSES = sa.Table(
    "analyses",
    _META,
    sa.Column("run_dir", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    *(sa.Column(c, sa.Text) for c in ("params", "updated", "result")),
)


def is_url(target: str | Path) -> bool:
    """An SQLAlchemy URL (`dialect[+driver]://...`) rather than a file path."""
    return "://" in str(target)


def display_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


class ResultsStore:
    """The index of runs: an SQLite file (a path) or any SQLAlchemy URL. Safe to share
    between concurrent processes; each method is one transaction."""

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        # A file path stays a path (its parent is created on first write); a URL is used as is.
        self.path: Path | None = None if is_url(target) else Path(target)
        self.url = self.target if self.path is None else f"sqlite:///{self.path.resolve()}"
        self._engine: Engine | None = None

    def __repr__(self) -> str:
        return f"ResultsStore({display_url(self.target)!r})"

    def _connect(self) -> Engine:
        if self._engine is not None:
            return self._engine
        where = display_url(self.target)
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # SQLite: no file handle outlives a call (NullPool), and a writer waits up to 30 s
            # for another one (sweep workers record their runs into one file).
            kwargs = (
                {"poolclass": NullPool, "connect_args": {"timeout": 30}}
                if self.url.startswith("sqlite")
                else {}
            )
            engine = sa.create_engine(self.url, **kwargs)
            if self.url.startswith("sqlite"):
                sa.event.listen(engine, "connect", _sqlite_pragmas)
            _create_tables(engine)
        except (OSError, ArgumentError, SQLAlchemyError, ImportError) as e:
            raise ForgetlabError(f"cannot open results store {where}: {_first_line(e)}") from e
        self._engine = engine
        return engine

    def _exists(self) -> bool:
        """False for a store file not yet written: reading it must not create it."""
        return self.path is None or self.path.exists()

    def record_run(self, run_dir: Path, summary: dict, config: dict, seeds: dict) -> None:
        key = str(Path(run_dir).resolve())
        row = {
            "run_dir": key,
            "name": summary.get("name"),
            "method": summary.get("method"),
            "model": summary.get("model"),
            "tasks": json.dumps(summary.get("tasks")),
            "seeds": json.dumps(sorted(seeds)),
            "updated": now(),
            "version": summary.get("version"),
            "config": json.dumps(config),
            "metrics": json.dumps(summary, default=str),
        }
        seed_rows = [
            {"run_dir": key, "seed": int(s), "metrics": json.dumps(m, default=str)}
            for s, m in seeds.items()
        ]

        def write(conn: sa.Connection) -> None:  # one transaction: the run and its seeds
            conn.execute(RUNS.delete().where(RUNS.c.run_dir == key))
            conn.execute(RUNS.insert(), [row])
            conn.execute(SEED_RUNS.delete().where(SEED_RUNS.c.run_dir == key))
            if seed_rows:
                conn.execute(SEED_RUNS.insert(), seed_rows)

        self._write("record run", write)

    def runs(self, must_exist: bool = False) -> list[dict]:
        """Every recorded run, oldest first. A store file not yet written holds none, or,
        with `must_exist` (a store the user named), is an error: a mistyped path must not
        read as "no runs"."""
        if not self._exists():
            if must_exist:
                raise ForgetlabError(f"results store {self.path} does not exist")
            return []
        cols = [RUNS.c[c] for c in ("run_dir", "name", "method", "model", "tasks", "updated")]
        query = sa.select(*cols, RUNS.c.metrics).order_by(RUNS.c.updated)
        return [
            {**{c.name: r[i] for i, c in enumerate(cols)}, "tasks": json.loads(r[4]),
             "metrics": json.loads(r[6])}
            for r in self._read(query)
        ]  # fmt: skip

    def check_target(self) -> None:
        """Before a run starts: a store path that can never be written (a folder, a file
        under a file) is refused now, not after the whole run."""
        if self.path is None:
            return
        if self.path.is_dir():
            raise ForgetlabError(
                f"output.store={self.path} is not writable: it is a folder (name a file in it)"
            )
        parent = next((p for p in self.path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ForgetlabError(
                f"output.store={self.path} is not writable: {parent} is a file, not a folder"
            )

    def record_analysis(self, run_dir: Path, name: str, params: dict, result: dict) -> None:
        """One analysis of one run (its newest result replaces the older one)."""
        key = str(Path(run_dir).resolve())
        row = {
            "run_dir": key,
            "name": name,
            "params": json.dumps(params),
            "updated": now(),
            "result": json.dumps(result),
        }

        def write(conn: sa.Connection) -> None:
            match = (ANALYSES.c.run_dir == key) & (ANALYSES.c.name == name)
            conn.execute(ANALYSES.delete().where(match))
            conn.execute(ANALYSES.insert(), [row])

        self._write("record analysis", write)

    def _write(self, what: str, write, attempts: int = 8) -> None:
        """Run `write(conn)` as one transaction. Concurrent writers (runs, sweep workers)
        wait for each other: SQLite's busy timeout covers most waits, but a writer can still
        be refused at once (SQLITE_BUSY on a snapshot another writer moved, PostgreSQL's
        serialization failures): such a refusal is retried with back-off, and only a
        lasting one reaches the user."""
        engine = self._connect()
        for attempt in range(attempts):
            try:
                with engine.begin() as conn:
                    write(conn)
                return
            except OperationalError as e:
                if attempt == attempts - 1 or not _transient(e):
                    raise self._write_error(what, e) from e
                time.sleep(min(0.05 * 2**attempt, 2.0))
            except SQLAlchemyError as e:
                raise self._write_error(what, e) from e

    def _write_error(self, what: str, e: SQLAlchemyError) -> ForgetlabError:
        return ForgetlabError(f"cannot {what} in {display_url(self.target)}: {_first_line(e)}")

    def analyses(self, run_dir: Path | None = None) -> list[dict]:
        if not self._exists():
            return []
        query = sa.select(ANALYSES).order_by(ANALYSES.c.updated)
        if run_dir is not None:
            query = query.where(ANALYSES.c.run_dir == str(Path(run_dir).resolve()))
        return [
            {"run_dir": r.run_dir, "name": r.name, "params": json.loads(r.params),
             "updated": r.updated, "result": json.loads(r.result)}
            for r in self._read(query)
        ]  # fmt: skip

    def _read(self, query: sa.Select) -> list[sa.Row]:
        engine = self._connect()
        try:
            with engine.connect() as conn:
                return list(conn.execute(query))
        except SQLAlchemyError as e:
            raise ForgetlabError(
                f"cannot read results store {display_url(self.target)}: {_first_line(e)}"
            ) from e


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    """busy_timeout: a writer (or a reader meeting a writer's commit) waits up to 30 s for
    the lock instead of failing at once. The journal stays SQLite's default (rollback), not
    WAL: a WAL store cannot even be read on a full disk (each new connection recreates its
    shared-memory file), and a full disk must leave earlier results readable."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _transient(e: OperationalError) -> bool:
    text = str(e.orig if e.orig is not None else e).lower()
    return any(k in text for k in ("locked", "busy", "could not serialize", "deadlock"))


def _first_line(e: BaseException) -> str:
    """SQLAlchemy's messages run to SQL text and a help link; the first line says why."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _create_tables(engine: Engine, attempts: int = 5) -> None:
    """CREATE TABLE IF NOT EXISTS, safe when several workers open one new PostgreSQL store at
    once: check-then-create is not atomic, and the loser of that race gets a unique violation
    on PostgreSQL's catalog (pg_type), or SQLite's "already exists", although the tables now
    exist. Try again."""
    for attempt in range(attempts):
        try:
            _META.create_all(engine)
            return
        except (IntegrityError, ProgrammingError, OperationalError) as e:
            # SQLite's loser says "table runs already exists", or that the file is locked
            retry = not isinstance(e, OperationalError) or _transient(e) or "exists" in str(e)
            if attempt == attempts - 1 or not retry:
                raise
            time.sleep(0.2 * (attempt + 1))


def record_result(result: RunResult) -> None:
    """Index a finished run (`forgetlab.recipe.run.run`'s result) in its config's results
    store: what `forgetlab.run` and every sweep trial do after the recipe."""
    ResultsStore(result.config.output.store).record_run(
        result.run_dir,
        {k: v for k, v in result.metrics.items() if k != "per_seed"},
        result.config.to_dict(),
        result.seed_metrics,
    )
