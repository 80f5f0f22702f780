"""`forgetlab sweep`: open (or resume) the study, run its trials with N workers, collect.

A sweep directory (output.dir):

    <out>/sweep.yaml          the resolved sweep config (run config + sweep:)
    <out>/optuna.sqlite       the study, unless --storage names another database
    <out>/trials/<point>/     one ordinary run directory per trial (config.yaml, metrics.json,
                              seed-<s>/ ...): a trial is one point with every seed of the sweep
    <out>/sweep.json          every trial: point, state, objectives, run directory
    <out>/answers.json        what the finished trials show (forgetlab.answers): each method at
                              its best setting, the frontier, matched learning, paired tests
    <out>/predict_lr.json     with sweep.predict_lr: the rate predicted per arm from the Hessian
                              at init, beside each arm's swept best (sweeps.predicted)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import yaml

from forgetlab.answers import answers, save_answers
from forgetlab.answers.points import NotComparable
from forgetlab.atomic import atomic_write_json, atomic_write_text
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.store import display_url, is_url
from forgetlab.sweeps import predicted
from forgetlab.sweeps import study as studies
from forgetlab.sweeps.result import (
    SUMMARY_FILE,
    SWEEP_FILE,
    SweepResult,
    collect,
    objective_metrics,
)
from forgetlab.sweeps.trial import SweepConfig, load_sweep_config
from forgetlab.sweeps.workers import run_workers

log = logging.getLogger("forgetlab")

BACKENDS = ("processes", "ray")  # who runs the trials; the Optuna study is the record of both


def run_sweep(
    config: SweepConfig | str | Path,
    overrides: list[str] | None = None,
    *,
    workers: int | None = None,
    storage: str | None = None,
    store: str | None = None,
    resume: bool = False,
    quiet: bool = False,
    backend: str = "processes",
    ray_address: str | None = None,
) -> SweepResult:
    """Run every trial of a sweep config; see the module docstring for what it writes.

    workers: trial processes on this machine (default 1; fresh processes with cores / N
    torch threads each and a passive OpenMP wait policy); with the ray backend, the trials
    in flight at once (default: as many as the Ray cluster holds). storage: an SQLAlchemy URL
    shared by every machine of the sweep (default: an SQLite file in the sweep directory).
    store: the results store (default: the storage URL when one is given, else
    output.store). resume: continue the study; only missing trials run. quiet: worker
    processes print errors only. backend: `processes` (worker processes) or `ray` (the
    trials as Ray tasks with sweep.resources each; sweeps.ray_backend). ray_address: a
    running Ray cluster (default: a local Ray on this machine's cores).
    """
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise ConfigError(f"--workers must be a whole number >= 1, got {workers!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if ray_address is not None and backend != "ray":
        raise ConfigError("--ray-address is for --backend ray")
    if not isinstance(config, SweepConfig):
        config = load_sweep_config(config, overrides)
    elif overrides:
        raise ConfigError("overrides apply to a config file, not to a loaded SweepConfig")
    if (config.out / SWEEP_FILE).is_file() and not resume:
        raise ForgetlabError(f"{config.out} already holds a sweep: use --resume to continue it")
    if storage is not None and not is_url(storage):
        raise ConfigError(f"--storage must be an SQLAlchemy URL (sqlite:///x.db, "
                          f"postgresql+psycopg://...), got {storage!r}")  # fmt: skip
    if backend == "processes":
        # Always fresh processes, --workers 1 too: torch may already be loaded here with
        # threads that spin-wait (on a busy machine a 1-worker sweep in this process ran 4x
        # slower).
        trials = partial(run_workers, workers or 1, quiet=quiet)
        return _sweep(config, resume, storage, store, trials, f"{workers or 1} worker(s)")
    from forgetlab.sweeps.ray_backend import ray_session  # ray loads here, and only here

    # Ray starts (or is joined) and sweep.resources is checked against it before anything
    # is written; it is shut down when the trials end, or fail.
    with ray_session(config.spec.resources, ray_address, workers, quiet) as trials:
        return _sweep(config, resume, storage, store, trials, "Ray tasks")


def _sweep(
    config: SweepConfig,
    resume: bool,
    storage: str | None,
    store: str | None,
    run_trials: Callable[[Path, str, str, str], list[int]],
    how: str,
) -> SweepResult:
    """Open (or resume) the study, run its trials with `run_trials(sweep_file, url, study,
    store)` (the backend, `how` in the log: one exit code per worker or lane), collect the
    result."""
    out = config.out
    sweep_file = out / SWEEP_FILE
    config = predicted.with_predictions(config, resume)  # sweep.predict_lr: rates per arm
    spec, points = config.spec, config.spec.grid()
    url = storage or studies.default_storage(out)
    store = store or (storage if storage is not None else config.base.output.store)
    out.mkdir(parents=True, exist_ok=True)
    rdb = studies.open_storage(url, spec)
    name = spec.study or config.base.name
    mark = studies.fingerprint(spec, points, config.raw)
    study = studies.open_study(rdb, name, spec, points, mark, resume)
    atomic_write_text(sweep_file, yaml.safe_dump(config.to_raw(), sort_keys=False))
    if resume and spec.is_grid:
        queued = studies.queue_failed_points(study, points)
        if queued:
            log.info("resume: %d failed point(s) queued again: %s", len(queued), ", ".join(queued))
    size = f"{len(points)} points" if spec.is_grid else f"{spec.trials} trials"
    log.info("sweep %r: %s, %s, storage %s", name, size, how, display_url(url))
    exits = run_trials(sweep_file, url, name, store)
    failed = [i for i, code in enumerate(exits) if code != 0]
    if failed:
        log.warning("worker(s) %s exited with %s", failed, [exits[i] for i in failed])
    study = studies.load(rdb, name, spec, points)
    result = SweepResult(
        sweep_dir=out,
        study=name,
        storage=display_url(url),
        objectives=spec.metrics,
        directions=spec.directions,
        trials=collect(study, points),
        worker_exits=exits,
        expected=len(points) if spec.is_grid else spec.trials,
    )
    atomic_write_json(out / SUMMARY_FILE, result.to_dict())
    result.answers = sweep_answers(result)
    if result.answers is not None:
        save_answers(result.answers, out)
    if spec.predict_lr is not None:
        try:
            predicted.after_sweep(out, result.run_dirs)
        except ForgetlabError as e:
            log.warning("no swept best rates beside the prediction: %s", e)
    return result


def sweep_answers(result: SweepResult) -> dict | None:
    """The answers over the finished trials, on the sweep's own objectives where they are a
    learning and a forgetting metric (else the answers' defaults); None with fewer than two
    finished trials."""
    runs = result.run_dirs
    if len(runs) < 2:
        return None
    learning, forgetting = objective_metrics(result.objectives)
    try:
        return answers(runs, learning=learning, forgetting=forgetting)
    except NotComparable as e:
        log.warning("no answers for this sweep: %s", e)
        return None
