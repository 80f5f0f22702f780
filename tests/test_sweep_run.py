"""Real tiny sweeps (MiniLM, a few steps): every trial an ordinary run directory that
compare / analyze / report accept; kill -9 mid-sweep, then --resume runs only what is missing
and ends where an uninterrupted sweep ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

import forgetlab
from forgetlab.store import ResultsStore
from forgetlab.sweeps.launch import run_sweep
from tests.conftest import needs_data, tiny_sweep_raw

pytestmark = needs_data

LRS = [1.0e-3, 2.0e-3, 4.0e-3]


def tiny_sweep(out: Path) -> dict:
    return tiny_sweep_raw(out, LRS)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "uninterrupted"
    return run_sweep(_write(out, tiny_sweep(out)))


def _write(out: Path, raw: dict) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _values(result) -> dict[str, list[float]]:
    return {t.point: t.values for t in result.complete}


def test_every_trial_is_a_run_directory_that_compare_analyze_report_accept(finished, tmp_path):
    assert len(finished.complete) == 3 and len(finished.trials) == 3
    study = optuna.load_study(
        study_name="tiny", storage=f"sqlite:///{finished.sweep_dir / 'optuna.sqlite'}"
    )
    for trial in finished.complete:
        run_dir = Path(trial.run_dir)
        assert run_dir.parent == (finished.sweep_dir / "trials").resolve()
        assert {"config.yaml", "metrics.json", "seed-1", "seed-2"} <= {
            p.name for p in run_dir.iterdir()
        }
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["seeds"] == [1, 2]  # one trial = one point with every seed
        assert trial.values[0] == pytest.approx(metrics["aggregate"]["initial_acc"]["mean"])
        # the Optuna trial points at its directory
        assert study.trials[trial.number].user_attrs["run_dir"] == str(run_dir)
    assert sorted(t.params["point"] for t in finished.complete) == [
        p.name for p in sorted(finished.run_dirs)
    ]
    stored = {r["run_dir"] for r in ResultsStore(finished.sweep_dir.parent / "store.sqlite").runs()}
    assert stored == {str(d) for d in finished.run_dirs}
    table = forgetlab.compare([finished.sweep_dir])
    assert all(f"tiny/{d.name}" in table for d in finished.run_dirs)
    page = forgetlab.report([finished.sweep_dir], tmp_path / "report.html")
    assert all(d.name in page.read_text() for d in finished.run_dirs)
    spectrum = forgetlab.analyze(finished.run_dirs[0], ["spectrum"])
    assert "spectrum" in spectrum


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_kill_9_then_resume_runs_only_the_missing_trials(finished, tmp_path):
    out = tmp_path / "killed"
    config = _write(out, tiny_sweep(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "forgetlab.cli", "sweep", str(config), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    trials = out / "trials"

    def one_done_one_started() -> bool:
        done = list(trials.glob("*/metrics.json"))
        return (
            len(done) == 1
            and any(trials.glob("*/seed-*/state.json"))
            and len(list(trials.glob("*/config.yaml"))) == 2
        )

    try:
        _wait_for(one_done_one_started, 300, "one finished trial and one started")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (first,) = [p.parent for p in trials.glob("*/metrics.json")]
    stamp = (first / "metrics.json").stat().st_mtime_ns

    resumed = run_sweep(config, resume=True)
    assert (first / "metrics.json").stat().st_mtime_ns == stamp  # not run again
    assert sorted(t.point for t in resumed.complete) == sorted(t.point for t in finished.complete)
    failed = [t for t in resumed.trials if t.state == "FAIL"]
    assert len(failed) == 1  # the killed trial, failed by its stopped heartbeat ...
    (retry,) = [t for t in resumed.complete if t.retry_of == failed[0].number]
    assert retry.point == failed[0].point  # ... and retried into the same run directory
    assert _values(resumed) == _values(finished)
    for run_dir in resumed.run_dirs:
        a = json.loads((run_dir / "metrics.json").read_text())["accuracy_matrix"]
        b = json.loads((finished.sweep_dir / "trials" / run_dir.name / "metrics.json").read_text())
        assert a == b["accuracy_matrix"]


def test_a_random_sampler_draws_log_uniform_rates_into_run_directories(tmp_path):
    out = tmp_path / "random"
    raw = tiny_sweep(out)
    raw["sweep"] = {"space": {"training.lr": {"log": [1.0e-4, 1.0e-2]}}, "sampler": "random",
                    "trials": 2, "seeds": [1], "objectives": ["learning"]}  # fmt: skip
    result = run_sweep(_write(out, raw))
    assert len(result.complete) == 2 and len(result.trials) == 2
    for trial in result.complete:
        lr = trial.params["training.lr"]
        assert 1e-4 <= lr <= 1e-2
        config = yaml.safe_load((Path(trial.run_dir) / "config.yaml").read_text())
        assert config["training"]["lr"] == lr and config["seeds"] == [1]
    assert len({t.params["training.lr"] for t in result.complete}) == 2


def test_cli_dry_run_lists_the_shipped_grid_without_running(capsys):
    from forgetlab.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["sweep", str(root / "configs" / "lr_matters.yaml"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "91 points (grid), each with seeds [1, 2, 3]"  # 7 methods x 13 rates
    assert lines[0] == "000-full-lr=1e-06  method.name=full training.lr=1e-06"
    assert "013-lora-lr=3.16e-05  method.name=lora training.lr=3.16e-05" in lines
    assert main(["sweep", str(root / "configs" / "smollm2_frontier.yaml"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "10 points (grid), each with seeds [1]"
    assert lines[0] == "000-full-lr=3.16e-06  method.name=full training.lr=3.16e-06"


def test_a_failing_trial_is_recorded_with_its_error_and_resume_queues_it_again(tmp_path, capsys):
    from forgetlab.cli import main

    out = tmp_path / "broken"
    raw = tiny_sweep(out)
    missing = str(tmp_path / "absent.csv")
    raw["tasks"] = ["rte", {"name": "mine", "type": "file", "train": missing, "eval": missing}]
    raw["sweep"]["space"] = {"training.lr": [1.0e-3]}
    config = str(_write(out, raw))
    assert main(["sweep", config, "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "1 trial(s) did not complete" in captured.err
    (trial,) = json.loads((out / "sweep.json").read_text())["trials"]
    assert trial["state"] == "FAIL" and "absent.csv" in trial["error"]
    assert main(["sweep", config, "--quiet", "--resume"]) == 1  # queued again, fails again
    trials = json.loads((out / "sweep.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["FAIL", "FAIL"]
    assert trials[0]["point"] == trials[1]["point"]


def test_a_sweep_ends_with_its_answers_and_compare_prints_them(finished, capsys):
    """answers.json holds what the trials show; `compare` of the sweep directory prints the
    same best-setting table, and --format json gives the same numbers as data."""
    saved = json.loads((finished.sweep_dir / "answers.json").read_text())
    assert saved == json.loads(json.dumps(finished.answers))
    best = saved["best"]["rows"]
    assert [row["method"] for row in best] == ["lora"] and best[0]["points"] == 3
    means = {t.point: t.values[0] for t in finished.complete}
    assert best[0]["learning"]["mean"] == pytest.approx(max(means.values()))
    from forgetlab.cli import main

    assert main(["compare", str(finished.sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "Best setting per method" in out and "Learning–forgetting frontier" in out
    assert main(["compare", str(finished.sweep_dir), "--format", "json"]) == 0
    tables = json.loads(capsys.readouterr().out)
    assert tables["best"]["rows"][0]["points"] == 3
