"""Sweep workers: each pulls trials from one Optuna study until none is left.

`--workers N` starts N fresh `python -m forgetlab.sweeps.workers` processes, each with
cores / N torch threads, set in its environment before torch loads: one thread pinned, more
under the thread governor as a lone run (`worker_env`), so that no worker's OpenMP threads
spin-wait on cores another process holds (oversubscribed spinning threads stall each other
by an order of magnitude). Workers on other machines join the same study through a shared
storage URL.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from forgetlab.errors import ForgetlabError
from forgetlab.sweeps import study as studies
from forgetlab.sweeps.prune import CurveReporter
from forgetlab.sweeps.spec import Point, SweepSpec
from forgetlab.sweeps.trial import (
    SweepConfig,
    load_sweep_config,
    objective_values,
    run_stacked_trials,
    run_trial,
    set_torch_threads,
    torch_threads,
)
from forgetlab.threads import USER_COUNTS, choice

# A worker prints only its trials' lines; each trial's own progress goes to its run.log.
log = logging.getLogger("forgetlab.sweep")


class Objective:
    """One trial: its point (the grid's next, or sampled), run as an ordinary run directory
    under <sweep>/trials/, its objectives the seeds' means."""

    def __init__(
        self, sweep: SweepConfig, store: str, points: list[Point], attrs: dict | None = None
    ) -> None:
        self.sweep, self.store, self.points = sweep, store, points
        self.by_name = {p.name: p for p in points}
        self.attrs = attrs or {}  # more user attributes of every trial (the Ray backend's)

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        spec = self.sweep.spec
        if spec.is_grid:
            point = self.by_name[trial.suggest_categorical("point", list(self.by_name))]
            if self._taken(trial, point.name):
                trial.set_user_attr("surplus", True)
                raise optuna.TrialPruned(f"{point.name} is run by an earlier trial")
            run_dir = self.sweep.out / "trials" / point.name
        else:
            point = self._sample(trial)
            # A retry keeps its folder's name (on another machine: under that one's output.dir).
            name = Path(trial.user_attrs.get("run_dir") or point.name).name
            run_dir = self.sweep.out / "trials" / name
        self._start(trial, point, run_dir)
        reporter = CurveReporter(trial, spec) if spec.pruner != "none" else None
        try:
            config = self.sweep.point_config(point, run_dir, self.store)
            summary = run_trial(config, on_curve=reporter)
            values = objective_values(summary, spec.metrics)
            missing = [m for m, v in zip(spec.metrics, values) if v is None]
            if missing:
                raise ForgetlabError(f"objective {missing[0]} is undefined for {run_dir}")
        except optuna.TrialPruned as e:
            trial.set_user_attr("pruned", str(e))
            log.info("trial %d (%s) %s", trial.number, point.name, e)
            raise
        except ForgetlabError as e:
            if reporter is not None:
                reporter.pruned()  # settles a two-objective sweep's companion trial
            trial.set_user_attr("error", str(e))
            log.error("trial %d (%s) failed: %s", trial.number, point.name, e)
            raise
        if reporter is not None:
            reporter.finish(values)
        log.info(
            "trial %d: %s  %s", trial.number, point.name,
            "  ".join(f"{m}={v:.4f}" for m, v in zip(spec.metrics, values)),
        )  # fmt: skip
        return values[0] if len(values) == 1 else values

    def _start(self, trial: optuna.Trial, point: Point, run_dir: Path) -> None:
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("overrides", point.overrides)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("torch_threads", torch_threads())
        for key, value in self.attrs.items():
            trial.set_user_attr(key, value)
        log.info("trial %d: %s", trial.number, point.name)

    def stacked(self, study: optuna.Study, points: list[Point]) -> int:
        """sweep.stack: ask for up to `stack` grid points, train those that differ only in
        values as one stacked model (the others one by one), tell each trial its objectives
        or its error. Returns how many trials ran."""
        spec, asked = self.sweep.spec, []
        while len(asked) < spec.stack and studies.next_step(study, spec, points) == "run":
            trial = study.ask()
            point = self.by_name[trial.suggest_categorical("point", list(self.by_name))]
            if self._taken(trial, point.name) or point.name in [p.name for _, p, _ in asked]:
                trial.set_user_attr("surplus", True)
                tell(study, trial, state=TrialState.PRUNED)
                break  # the grid's free points are handed out: run what we have
            run_dir = self.sweep.out / "trials" / point.name
            self._start(trial, point, run_dir)
            try:
                asked.append((trial, point, self.sweep.point_config(point, run_dir, self.store)))
            except ForgetlabError as e:
                trial.set_user_attr("error", str(e))
                tell(study, trial, state=TrialState.FAIL)
        if len(asked) > 1:
            log.info("stacking %d trials: %s", len(asked), ", ".join(p.name for _, p, _ in asked))
        results = run_stacked_trials([config for _, _, config in asked]) if asked else []
        for (trial, point, _), result in zip(asked, results):
            values = (
                None if isinstance(result, Exception) else objective_values(result, spec.metrics)
            )
            if values is not None and None in values:
                missing = spec.metrics[values.index(None)]
                result = ForgetlabError(f"objective {missing} is undefined for {point.name}")
            if isinstance(result, Exception):
                trial.set_user_attr("error", str(result))
                log.error("trial %d (%s) failed: %s", trial.number, point.name, result)
                tell(study, trial, state=TrialState.FAIL)
                continue
            log.info(
                "trial %d: %s  %s", trial.number, point.name,
                "  ".join(f"{m}={v:.4f}" for m, v in zip(spec.metrics, values)),
            )  # fmt: skip
            tell(study, trial, values[0] if len(values) == 1 else values)
        return len(asked)

    def _taken(self, trial: optuna.Trial, name: str) -> bool:
        """Another worker's earlier trial already runs (or ran) this point: a race at the end
        of the grid, or a point queued twice. The earliest trial keeps the point."""
        for other in trial.study.get_trials(deepcopy=False):
            if (
                other.number < trial.number
                and other.state in (TrialState.RUNNING, TrialState.COMPLETE)
                and not other.user_attrs.get("surplus")
                and studies.point_name(other, self.points) == name
            ):
                return True
        return False

    def _sample(self, trial: optuna.Trial) -> Point:
        spec = self.sweep.spec
        arms = spec.arm_names
        arm = trial.suggest_categorical("arm", arms) if len(arms) > 1 else (arms or [None])[0]
        params = {}
        for key, axis in spec.arm_space(arm).items():
            name = key if spec.space.get(key) is axis else f"{arm}:{key}"
            if axis.is_log:
                params[key] = trial.suggest_float(name, axis.low, axis.high, log=True)
            else:
                params[key] = trial.suggest_categorical(name, axis.values)
        return Point(trial.number, arm or "base", params, spec.arm_overrides(arm))


def work(sweep: SweepConfig, url: str, study_name: str, store: str) -> int:
    """Run trials of the study until every one is done; returns how many this worker ran."""
    study, objective = open_study(sweep, url, study_name, store)
    ran = 0
    while wait_for_trial(study, sweep.spec, objective.points):
        ran += run_one(study, objective)
    return ran


def open_study(
    sweep: SweepConfig, url: str, study_name: str, store: str, attrs: dict | None = None
) -> tuple[optuna.Study, Objective]:
    """The study as a worker sees it, and the objective its trials run."""
    studies.quiet_optuna()
    spec, points = sweep.spec, sweep.spec.grid()
    study = studies.load(studies.open_storage(url, spec), study_name, spec, points)
    return study, Objective(sweep, store, points, attrs)


def wait_for_trial(study: optuna.Study, spec: SweepSpec, points: list[Point]) -> bool:
    """True when a trial is there to run; False when none is left. Meanwhile (trials run
    elsewhere) a killed worker's trial is failed by its stale heartbeat, and queued again."""
    while True:
        step = studies.next_step(study, spec, points)
        if step != "wait":
            return step == "run"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)
        time.sleep(min(2.0, spec.heartbeat_s / 2))


def tell(study: optuna.Study, trial: optuna.Trial, *args, **kwargs) -> None:
    """`study.tell` for ask-and-tell. After the grid's last point GridSampler calls
    `study.stop()`, which outside `study.optimize` raises RuntimeError (Optuna documents it:
    optuna#5141, #5153) once the trial is stored; there is nothing to stop here, since the
    worker's loop asks `next_step` and finds the grid done."""
    try:
        study.tell(trial, *args, **kwargs)
    except RuntimeError as e:
        if not isinstance(study.sampler, optuna.samplers.GridSampler) or "Study.stop" not in str(e):
            raise


def run_one(study: optuna.Study, objective: Objective) -> int:
    """One trial: Optuna asks (the grid's next point, or a sample), the objective runs it, and
    Optuna is told; a forgetlab error fails this trial only. With sweep.stack: up to that many
    trials as one stacked model. Returns how many trials ran."""
    if objective.sweep.spec.stack > 1:
        return objective.stacked(study, objective.points)
    study.optimize(objective, n_trials=1, catch=(ForgetlabError,), gc_after_trial=False)
    return 1


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_env(threads: int) -> dict[str, str]:
    """A pinned pool, set before torch loads: `threads` torch threads waiting passively. For
    one-thread workers (a single thread has no barrier to wait at) and Ray's trial tasks
    (Ray starts and reuses their processes and sets OMP_NUM_THREADS itself)."""
    return {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "TOKENIZERS_PARALLELISM": "false",
        "FORGETLAB_TORCH_THREADS": str(threads),
    }


def worker_env(threads: int) -> dict[str, str]:
    """A `--workers N` process's environment. One thread: pinned (`thread_env`). More: what a
    lone `forgetlab run` gets, the thread governor (forgetlab.threads) over torch's
    spin-waiting pool, at most `threads` threads and fewer while other processes take the
    cores. Why not pinned and passive there too: passive waiting at 2 threads trained a
    MiniLM LoRA stage 1.7x slower than the governed pool, alone (800 SST-2 examples, 5.73 vs
    3.33 s, 2-core Xeon, 2026-12-04), which made `--workers 1` 2.6x slower than
    `--workers 2` on 2 cores (benchmarks/study_cost.py). The sweep decides each worker's
    share, so a thread count inherited from the caller's shell is dropped, as the pinned
    workers override it."""
    if threads == 1:
        return {**os.environ, **thread_env(1)}
    # the pinned settings but the counts and the wait policy, which the governor chooses
    unpinned = (*USER_COUNTS, "OMP_WAIT_POLICY")
    own = {k: v for k, v in thread_env(threads).items() if k not in unpinned}
    inherited = {k: v for k, v in os.environ.items() if k not in USER_COUNTS}
    return {**inherited, **own}


def worker_threads(n: int, environ: Mapping[str, str] = os.environ) -> int:
    """Each of `n` workers' torch threads: the user's own `FORGETLAB_THREADS=N`, as a lone
    run takes it (forgetlab.threads), else its share of the cores."""
    chosen = choice(environ)
    return int(chosen) if chosen.isdigit() else max(1, cores() // n)


def run_workers(
    n: int, sweep_file: Path, url: str, study_name: str, store: str, quiet: bool = False
) -> list[int]:
    """Start N worker processes, wait for all; their exit codes (negative: killed by that
    signal). Ctrl-C stops them all (their trials are then resumed by --resume)."""
    threads = worker_threads(n)
    cmd = [sys.executable, "-m", "forgetlab.sweeps.workers", str(sweep_file),
           "--storage", url, "--study", study_name, "--store", store]  # fmt: skip
    if quiet:
        cmd.append("--quiet")
    procs = [subprocess.Popen(cmd, env=worker_env(threads)) for _ in range(n)]
    try:
        return [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise


def set_up_worker(quiet: bool, tag: str | None = None) -> None:
    """A worker process's own settings: its log lines (each after `tag`, by default
    `[worker PID] `), torch's threads (the environment's FORGETLAB_TORCH_THREADS), quiet
    libraries."""
    tag = f"[worker {os.getpid()}] " if tag is None else tag
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{tag}%(message)s"))
    log.handlers = [handler]  # once, even where a process sets up again (a Ray worker)
    log.setLevel(logging.ERROR if quiet else logging.INFO)
    log.propagate = False
    threads = os.environ.get("FORGETLAB_TORCH_THREADS")
    if threads:
        set_torch_threads(int(threads))
    from forgetlab.sweeps.trial import quiet_libraries

    quiet_libraries()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m forgetlab.sweeps.workers")
    p.add_argument("sweep_file", help="the sweep's resolved sweep.yaml")
    p.add_argument("--storage", required=True)
    p.add_argument("--study", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--quiet", action="store_true", help="errors only")
    args = p.parse_args(argv)
    try:
        set_up_worker(args.quiet)
        work(load_sweep_config(args.sweep_file), args.storage, args.study, args.store)
    except ForgetlabError as e:
        print(f"forgetlab: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
