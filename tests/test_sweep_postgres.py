"""A real PostgreSQL server on loopback, started here (Debian's postgresql 15: initdb +
pg_ctl in a temp dir, as the `postgres` user when run as root): four workers share one study
with no trial lost or duplicated, a worker killed -9 mid-trial has its trial retried, and a
real two-worker sweep keeps the results store on the same server."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

import forgetlab
from forgetlab.store import ResultsStore
from forgetlab.sweeps import study as studies
from forgetlab.sweeps.launch import run_sweep
from forgetlab.sweeps.trial import load_sweep_config
from forgetlab.sweeps.workers import worker_threads
from tests.conftest import needs_data
from tests.test_sweep_run import tiny_sweep

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ROOT = Path(__file__).resolve().parents[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    if not (PG_BIN / "initdb").is_file() or not (PG_BIN / "pg_ctl").is_file():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (apt install postgresql)")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run initdb as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and there is no runuser to switch to `postgres`")
    base = Path(tempfile.mkdtemp(prefix="forgetlab-pg-"))
    if os.geteuid() == 0:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, port = base / "data", _free_port()
    run = {"check": True, "capture_output": True, "text": True}
    subprocess.run(
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                      "--auth=trust", "-E", "UTF8"]), **run,
    )  # fmt: skip
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=100"
    subprocess.run(
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts,
                      "-l", str(base / "server.log"), "-w", "start"]), **run,
    )  # fmt: skip
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE forgetlab")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/forgetlab"
    finally:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def _sweep_raw(out: Path, lrs: list[float]) -> dict:
    """The tiny sweep of test_sweep_run, named after its folder, over these rates, 1 seed."""
    raw = tiny_sweep(out)
    raw["name"] = out.name
    raw["sweep"].update(space={"training.lr": lrs}, seeds=[1])
    return raw


# --- a worker whose trials take 2 s and train nothing: the coordination under test is Optuna's
# and forgetlab's (storage, heartbeat, retry, the grid), not the run loop.


def _fake_worker(sweep_file: str, url: str, study_name: str) -> None:
    from forgetlab.sweeps import workers

    def fake_run_trial(config, on_curve=None) -> dict:
        run_dir = Path(config.output.dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "executions.txt", "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(2.0)
        lr = config.training.lr
        return {"aggregate": {"initial_acc": {"mean": lr}, "avg_forgetting": {"mean": -lr}}}

    workers.run_trial = fake_run_trial
    workers.work(load_sweep_config(sweep_file), url, study_name, "unused.sqlite")


# ~25 s; the default suite keeps PostgreSQL sweeps through the two-worker test below and the
# retry of a killed worker's trial through test_sweep_run's SQLite kill test.
@pytest.mark.slow
def test_four_workers_share_one_study_and_a_killed_workers_trial_is_retried(postgres_url, tmp_path):
    lrs = [round(1e-4 * (k + 1), 6) for k in range(10)]
    out = tmp_path / "shared"
    sweep = load_sweep_config(raw=_sweep_raw(out, lrs))
    points = sweep.spec.grid()
    rdb = studies.open_storage(postgres_url, sweep.spec)
    mark = studies.fingerprint(sweep.spec, points, sweep.raw)
    studies.open_study(rdb, "shared", sweep.spec, points, mark, resume=False)
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep.to_raw()))
    cmd = [sys.executable, "-m", "tests.test_sweep_postgres", str(sweep_file), postgres_url,
           "shared"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env) for _ in range(4)]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    victim = None
    try:
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            for t in study.get_trials(states=[optuna.trial.TrialState.RUNNING]):
                pid = int(t.user_attrs.get("worker", ":0").rsplit(":", 1)[1])
                if pid in [p.pid for p in procs]:
                    victim = (t.number, pid)
                    break
            time.sleep(0.2)
        assert victim is not None, "no worker started a trial"
        os.kill(victim[1], signal.SIGKILL)
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert sorted(codes) == [-signal.SIGKILL, 0, 0, 0]
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # every point completed exactly once: none lost, none duplicated
    assert sorted(t.params["point"] for t in complete) == sorted(p.name for p in points)
    killed = study.trials[victim[0]]
    assert killed.state == optuna.trial.TrialState.FAIL
    (retry,) = [t for t in complete if t.system_attrs.get("failed_trial") == victim[0]]
    assert retry.params["point"] == killed.params["point"]
    runs = {p.name: (out / "trials" / p.name / "executions.txt").read_text().split()
            for p in points}  # fmt: skip
    assert len(runs[killed.params["point"]]) == 2  # the killed execution and its retry
    assert all(len(r) == 1 for name, r in runs.items() if name != killed.params["point"])
    for t in complete:  # each trial's values are its own point's
        lr = float(t.params["point"].split("lr=")[1])
        assert t.values == pytest.approx([lr, -lr], rel=1e-2)


@needs_data
def test_two_real_workers_on_postgres_keep_the_results_store_there_too(postgres_url, tmp_path):
    out = tmp_path / "real"
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(_sweep_raw(out, [1.0e-3, 3.0e-3, 1.0e-2])))
    result = run_sweep(path, workers=2, storage=postgres_url)
    assert result.worker_exits == [0, 0]
    study = optuna.load_study(study_name="real", storage=postgres_url)
    # each worker process got its share of the cores (or the suite's FORGETLAB_THREADS), set
    # before torch loaded (a worker that asked when every point was taken holds a pruned
    # "surplus" trial, which never started)
    started = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert len(started) == 3
    assert {t.user_attrs["torch_threads"] for t in started} == {worker_threads(2)}
    assert len(result.complete) == 3 and len(result.trials) == 3
    stored = {r["run_dir"] for r in ResultsStore(postgres_url).runs()}
    assert {str(d) for d in result.run_dirs} <= stored  # the store is on the same server
    assert not (tmp_path / "store.sqlite").exists()
    table = forgetlab.compare(store=postgres_url)
    assert all(f"real/{d.name}" in table for d in result.run_dirs)


if __name__ == "__main__":
    _fake_worker(*sys.argv[1:4])
