"""Atomic writes: a failed write (full disk) leaves the earlier file intact and says why."""

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
