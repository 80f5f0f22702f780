"""Atomic writes (a failed write leaves the earlier file intact and says why) and the results
store (SQLite file or SQLAlchemy URL)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from forgetlab.atomic import atomic_dir, atomic_write_json
from forgetlab.errors import ForgetlabError
from forgetlab.store import ResultsStore


def test_full_disk_keeps_the_old_file_and_names_the_problem(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"acc": 0.5})

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(ForgetlabError, match="disk full while writing .*metrics.json"):
        atomic_write_json(target, {"acc": 0.9})
    assert json.loads(target.read_text()) == {"acc": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "ckpt"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("crash mid-save")
    assert (final / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_results_store_round_trip(tmp_path):
    store = ResultsStore(tmp_path / "s.sqlite")
    summary = {"name": "r", "method": "lora", "model": "m", "tasks": ["a", "b"], "version": "x"}
    store.record_run(tmp_path / "run", summary, {"k": 1}, {1: {"acc": 0.7}, 2: {"acc": 0.8}})
    store.record_run(tmp_path / "run", summary, {"k": 1}, {1: {"acc": 0.7}})  # replaced
    runs = store.runs()
    assert len(runs) == 1 and runs[0]["method"] == "lora" and runs[0]["tasks"] == ["a", "b"]


def test_results_store_keeps_seeds_and_analyses(tmp_path):
    store = ResultsStore(tmp_path / "sub" / "s.sqlite")
    assert store.runs() == [] and store.analyses() == []
    assert not (tmp_path / "sub").exists()  # reading an absent store does not create it
    summary = {"name": "r", "method": "full", "tasks": ["a"]}
    store.record_run(tmp_path / "run", summary, {}, {1: {"acc": 0.7}, 2: {"acc": 0.8}})
    store.record_analysis(tmp_path / "run", "cka", {"n": 1}, {"x": 1})
    store.record_analysis(tmp_path / "run", "cka", {"n": 2}, {"x": 2})  # the newest replaces
    store.record_analysis(tmp_path / "other", "spectrum", {}, {"y": 3})
    (only,) = store.analyses(tmp_path / "run")
    assert only["params"] == {"n": 2} and only["result"] == {"x": 2}
    assert len(store.analyses()) == 2
    engine = store._connect()
    with engine.connect() as conn:
        seeds = conn.exec_driver_sql("SELECT seed, metrics FROM seed_runs ORDER BY seed").all()
    assert [(s, json.loads(m)) for s, m in seeds] == [(1, {"acc": 0.7}), (2, {"acc": 0.8})]


def test_results_store_opens_a_file_written_by_the_sqlite3_store(tmp_path):
    """Stores written before the move to SQLAlchemy (plain sqlite3, untyped columns) open."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE runs (run_dir TEXT PRIMARY KEY, name TEXT, method TEXT, model TEXT, "
        "tasks TEXT, seeds TEXT, updated TEXT, version TEXT, config TEXT, metrics TEXT);"
        "CREATE TABLE seed_runs (run_dir TEXT, seed INTEGER, metrics TEXT, "
        "PRIMARY KEY (run_dir, seed));"
        "CREATE TABLE analyses (run_dir TEXT, name TEXT, params TEXT, updated TEXT, "
        "result TEXT, PRIMARY KEY (run_dir, name));"
    )
    conn.execute(
        "INSERT INTO runs VALUES ('/x', 'old', 'lora', 'm', '[\"a\"]', '[1]', "
        "'2026-01-01T00:00:00', '0.1.0', '{}', '{\"name\": \"old\"}')"
    )
    conn.commit()
    conn.close()
    store = ResultsStore(path)
    store.record_run(tmp_path / "new", {"name": "new", "tasks": ["b"]}, {}, {1: {}})
    assert [r["name"] for r in store.runs()] == ["old", "new"]


def test_results_store_url_that_cannot_connect_is_one_clear_line():
    # Port 9 on loopback (discard) has no PostgreSQL server; the password is not echoed.
    store = ResultsStore("postgresql+psycopg://u:secret@127.0.0.1:9/db?connect_timeout=3")
    with pytest.raises(ForgetlabError, match=r"cannot open results store .*127\.0\.0\.1:9") as e:
        store.runs()
    assert "secret" not in str(e.value) and "\n" not in str(e.value)
