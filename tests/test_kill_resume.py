"""Kill anywhere, then --resume: a tiny 4-stage run killed with SIGKILL at three moments
(inside a stage's training, between two stages, inside an evaluation) ends, after
`forgetlab run --resume`, with the same matrix, metrics and store row as a run never killed.

The moments are found from the run's own files, so the kill lands where a user's would:
- during a stage: the log's first step line of stage 2 (`log_every: 1`);
- during evaluation: the log's "N steps, loss a -> b" line of stage 2, written right before
  its evaluation row is scored;
- between stages: state.json's second row (stage 1 recorded, stage 2 not yet trained).
Where the kill really fell is recorded in the test's assertion message; whichever it is,
the resumed run must equal the uninterrupted one. Under `-m slow`, 20 random moments.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from forgetlab.store import ResultsStore
from tests.conftest import needs_data

pytestmark = needs_data

TASKS = ["rte", "mrpc", "cola", "sst2"]
# Wall-clock numbers differ between any two runs; everything else must be equal.
TIMING = re.compile(r"(_s|_per_s|^timing|^wall|^updated)$")


def tiny(out: Path) -> dict:
    return {
        "name": "killed",
        "tasks": TASKS,
        "model": {"max_length": 32},
        "data": {"max_train_examples": 16, "max_eval_examples": 32},
        "method": {"name": "lora"},
        "training": {"lr": 2e-3, "epochs": 1, "batch_size": 8, "max_steps": 2, "log_every": 1,
                     "progress_bar": False},
        "output": {"dir": str(out), "store": str(out.parent / f"{out.name}.sqlite"),
                   "checkpoints": "last"},
    }  # fmt: skip


def _cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "forgetlab.cli", "run", str(config), "--quiet", *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _write(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(tiny(out)))
    return path


def _strip(value):
    """The numbers of a metrics document without its wall-clock figures."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _outcome(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    (row,) = ResultsStore(out.parent / f"{out.name}.sqlite").runs()
    return {
        "matrix": metrics["accuracy_matrix"],
        "metrics": _strip(metrics),
        "seed": _strip(json.loads((out / "seed-1" / "metrics.json").read_text())),
        "store": _strip(row["metrics"]),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kill") / "whole"
    subprocess.run(_cmd(_write(out)), env=ENV, check=True, capture_output=True)
    return _outcome(out)


def _log(out: Path) -> str:
    path = out / "run.log"
    return path.read_text(errors="replace") if path.is_file() else ""


def _rows(out: Path) -> int:
    try:
        return len(json.loads((out / "seed-1" / "state.json").read_text())["rows"])
    except (OSError, ValueError, KeyError):
        return 0


MOMENTS = {
    "during a stage": lambda out: re.search(r"stage 2 \w+ step 1/", _log(out)) is not None,
    "during evaluation": lambda out: (
        re.search(r"stage 2 \w+: \d+ steps, loss", _log(out)) is not None
    ),
    "between stages": lambda out: _rows(out) >= 2,
}


def _kill_when(config: Path, out: Path, moment) -> tuple[bool, str]:
    """Start the run, SIGKILL its process group when `moment(out)` holds; say whether it was
    killed before it finished, and where it fell."""
    proc = subprocess.Popen(_cmd(config), env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while not moment(out):
            if proc.poll() is not None:
                break  # finished before the moment: the resume below must then be a no-op
            if time.monotonic() > deadline:
                raise AssertionError("the run never reached the moment")
            time.sleep(0.01)
    finally:
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    where = f"killed with {_rows(out)} rows recorded; log ends {_log(out)[-160:]!r}"
    return killed and not (out / "metrics.json").exists(), where


def _resume_equals(config: Path, out: Path, expected: dict, where: str) -> None:
    done = subprocess.run(_cmd(config, "--resume"), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, f"{where}: resume failed: {done.stderr[-600:]}"
    got = _outcome(out)
    for key in expected:
        assert got[key] == expected[key], f"{where}: {key} differs after resume"
    assert not list(out.rglob("*.tmp")), f"{where}: temporary files left behind"


@pytest.mark.parametrize(
    "moment",
    # between stages is slow-only: tests/test_run.py resumes a run stopped between stages
    [pytest.param(m, marks=pytest.mark.slow) if m == "between stages" else m for m in MOMENTS],
)
def test_killed_then_resumed_equals_uninterrupted(moment, uninterrupted, tmp_path):
    out = tmp_path / "run"
    config = _write(out)
    killed, where = _kill_when(config, out, MOMENTS[moment])
    assert killed, f"{moment}: the run ended before it could be killed ({where})"
    _resume_equals(config, out, uninterrupted, f"{moment} ({where})")


@pytest.mark.slow
@pytest.mark.parametrize("draw", range(20))
def test_killed_at_a_random_moment_then_resumed_equals_uninterrupted(draw, uninterrupted, tmp_path):
    out = tmp_path / "run"
    config = _write(out)
    delay = random.Random(draw).uniform(2.0, 25.0)  # model load to the last stage, here
    start = time.monotonic()
    _, where = _kill_when(config, out, lambda _: time.monotonic() - start > delay)
    _resume_equals(config, out, uninterrupted, f"after {delay:.1f} s ({where})")


def test_a_run_killed_before_its_config_was_written_resumes_from_the_start(tmp_path):
    """The slow random kills found it: a kill while the run starts (its directory and lock
    made, no config.yaml yet) left a directory `--resume` refused. Nothing was computed
    there, so resuming it starts it; a directory that holds results without a config, or
    none at all (a mistyped --out), is still refused."""
    from forgetlab.errors import ForgetlabError
    from forgetlab.recipe.run import prepare_out_dir
    from forgetlab.resolve import load_config
    from forgetlab.rundir import RunDir

    out = tmp_path / "run"
    config = load_config(raw=tiny(out))
    with pytest.raises(ForgetlabError, match="holds no run"):
        prepare_out_dir(config, RunDir(out), resume=True)
    out.mkdir()
    (out / ".lock").touch()
    prepare_out_dir(config, RunDir(out), resume=True)
    assert yaml.safe_load((out / "config.yaml").read_text())["name"] == "killed"
    other = tmp_path / "other"
    (other / "seed-1").mkdir(parents=True)
    with pytest.raises(ForgetlabError, match="holds no run"):
        prepare_out_dir(config, RunDir(other), resume=True)
