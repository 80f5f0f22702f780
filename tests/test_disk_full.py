"""A full disk during a checkpoint, a metrics write, a store write and a report write: one
clear line naming the file, earlier files intact and readable, no temporary file left.

Each case runs on a small tmpfs mounted for the test (skipped with the reason where it cannot
be mounted, e.g. without root), filled so that the next write cannot fit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from forgetlab.atomic import atomic_write_json
from forgetlab.errors import ForgetlabError
from forgetlab.store import ResultsStore
from tests.report_fixtures import write_runs


@pytest.fixture
def disk(tmp_path) -> Path:
    """A 4 MiB tmpfs at tmp_path/disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or 'mount failed'}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Take all but about `leave` bytes of the disk."""
    import os

    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


def _no_tmp(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_a_metrics_write_on_a_full_disk_keeps_the_old_file(disk):
    path = disk / "run" / "metrics.json"
    atomic_write_json(path, {"accuracy_matrix": [[0.5]]})
    _fill(disk, leave=16 * 1024)
    with pytest.raises(ForgetlabError) as e:
        atomic_write_json(path, {"blob": "x" * (1 << 20)})
    assert "disk full" in _one_line(e.value) and str(path) in str(e.value)
    assert json.loads(path.read_text()) == {"accuracy_matrix": [[0.5]]}
    _no_tmp(disk)


def test_a_store_write_on_a_full_disk_keeps_the_recorded_runs(disk, tmp_path):
    store = ResultsStore(disk / "store.sqlite")
    store.record_run(tmp_path / "a", {"name": "a", "method": "full"}, {}, {1: {"x": 1}})
    _fill(disk, leave=16 * 1024)
    with pytest.raises(ForgetlabError) as e:
        store.record_run(tmp_path / "b", {"name": "b", "blob": "x" * (1 << 21)}, {}, {1: {"x": 2}})
    assert "store" in _one_line(e.value)
    assert [r["name"] for r in ResultsStore(disk / "store.sqlite").runs()] == ["a"]


def test_a_checkpoint_on_a_full_disk_is_one_line_and_keeps_the_stage_before(disk):
    """A full-FT MiniLM backbone (~90 MB) on a 4 MiB disk: safetensors' own error becomes
    forgetlab's disk-full line; the earlier checkpoint folder is untouched."""
    from forgetlab.config import ModelConfig
    from forgetlab.methods import get_method
    from forgetlab.models import TaskModel, load_backbone
    from forgetlab.recipe.build import save_checkpoint

    backbone, hidden = load_backbone(ModelConfig())
    model = TaskModel(backbone, hidden, {"sst2": 2})
    earlier = disk / "seed-1" / "stage-1-rte"
    earlier.mkdir(parents=True)
    (earlier / "heads.safetensors").write_bytes(b"earlier")
    method = get_method("full")
    with pytest.raises(ForgetlabError) as e:
        save_checkpoint(model, method, disk / "seed-1" / "stage-2-sst2")
    assert "disk full" in _one_line(e.value)
    assert (earlier / "heads.safetensors").read_bytes() == b"earlier"
    assert not (disk / "seed-1" / "stage-2-sst2").exists()
    _no_tmp(disk)


def test_a_report_on_a_full_disk_is_one_line_and_keeps_the_old_page(disk, tmp_path):
    runs = write_runs(tmp_path / "runs")
    page = disk / "report.html"
    page.write_text("<html>the earlier report</html>")
    _fill(disk, leave=8 * 1024)
    done = subprocess.run(
        [sys.executable, "-m", "forgetlab.cli", "report", *map(str, runs), "--out", str(page)],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "disk full" in lines[0], done.stderr
    assert page.read_text() == "<html>the earlier report</html>"
    _no_tmp(disk)
