"""The Optuna side of a sweep: storage, sampler, the study and what its trials say.

Grid sweeps are one study over (arm, point) combinations: the grid is an explicit search
space of one categorical parameter, `point`, whose values are the points' names, given to
Optuna's GridSampler (per-arm spaces make the grid a union of products, which GridSampler's
own product cannot express). Other samplers suggest `arm` and then that arm's axes by name
(an axis an arm replaces is named `<arm>:<key>`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import FrozenTrial, TrialState

from forgetlab.errors import ForgetlabError
from forgetlab.store import display_url
from forgetlab.sweeps.prune import make_pruner
from forgetlab.sweeps.spec import Point, SweepSpec

ATTR = "forgetlab"  # the study's user attribute that records what the sweep is


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'optuna.sqlite').resolve()}"


def open_storage(url: str, spec: SweepSpec) -> RDBStorage:
    """The study's RDB storage, with heartbeats: a trial whose worker stopped beating for
    2 × heartbeat_s is failed and retried (up to max_retry times) by the next worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat_interval is marked experimental
        try:
            engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=spec.heartbeat_s,
                grace_period=2 * spec.heartbeat_s,
                heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=spec.max_retry),
            )
        except Exception as e:  # noqa: BLE001 - SQLAlchemy, drivers and Optuna raise many kinds
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ForgetlabError(f"cannot connect to storage {display_url(url)}: {first}") from e


def make_sampler(spec: SweepSpec, points: list[Point]) -> optuna.samplers.BaseSampler:
    seed = spec.sampler_seed
    if spec.is_grid:
        return optuna.samplers.GridSampler({"point": [p.name for p in points]}, seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.NSGAIISampler(seed=seed)


def fingerprint(spec: SweepSpec, points: list[Point], base: dict) -> dict[str, Any]:
    """What makes two sweeps the same study: the points (or sampled space), the seeds, the
    objectives, and the run config they share (less where it is written)."""
    shared = {k: v for k, v in base.items() if k not in ("output", "name")}
    shared["training"] = {
        k: v for k, v in shared.get("training", {}).items() if k not in ("progress_bar", "trackers")
    }
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()
    space = (
        [p.key for p in points]
        if spec.is_grid
        else {arm or "base": {k: [a.values, a.low, a.high] for k, a in spec.arm_space(arm).items()}
              for arm in spec.arm_names or [None]}
    )  # fmt: skip
    return {
        "space": space,
        "sampler": spec.sampler,
        "trials": spec.trials,
        "seeds": spec.seeds,
        "objectives": spec.metrics,
        "config": digest[:16],
    }


def _difference(old: dict, new: dict) -> str:
    for key in new:
        if old.get(key) != new[key]:
            if key == "space" and isinstance(new[key], list):
                gone = [k for k in old.get(key) or [] if k not in new[key]]
                added = [k for k in new[key] if k not in (old.get(key) or [])]
                return f"the space differs ({len(added)} new points, {len(gone)} missing)"
            if key == "config":
                return "the run config differs"
            return f"sweep {key} was {old.get(key)!r}, now {new[key]!r}"
    return "it differs"


def open_study(
    storage: RDBStorage, name: str, spec: SweepSpec, points: list[Point], mark: dict, resume: bool
) -> optuna.Study:
    """Create the study, or (with resume) open the existing one if it is the same sweep."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exists = name in [s.study_name for s in storage.get_all_studies()]
    where = display_url(storage.url)
    if exists and not resume:
        raise ForgetlabError(
            f"study {name!r} already exists in {where}: use --resume to continue it (only "
            "missing trials run), or choose another output dir / sweep.study"
        )
    if not exists and resume:
        raise ForgetlabError(f"cannot resume: no study {name!r} in {where}")
    kwargs = {"sampler": make_sampler(spec, points), "pruner": make_pruner(spec)}
    if not exists:
        study = optuna.create_study(
            storage=storage, study_name=name, directions=spec.directions, load_if_exists=True,
            **kwargs,
        )  # fmt: skip
        if ATTR not in study.user_attrs:
            study.set_user_attr(ATTR, mark)
    else:
        study = optuna.load_study(storage=storage, study_name=name, **kwargs)
    old = study.user_attrs.get(ATTR)
    if old is None:
        raise ForgetlabError(f"study {name!r} in {where} was not made by forgetlab sweep")
    if old != mark:
        raise ForgetlabError(
            f"study {name!r} in {where} was made by a different sweep: {_difference(old, mark)}; "
            "refused (it would mix two sweeps' trials): use another output dir or sweep.study"
        )
    return study


def load(storage: RDBStorage, name: str, spec: SweepSpec, points: list[Point]) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(
        storage=storage,
        study_name=name,
        sampler=make_sampler(spec, points),
        pruner=make_pruner(spec),
    )


def point_name(trial: FrozenTrial, points: list[Point]) -> str | None:
    """The grid point a trial runs: its parameter, its queued parameter, or its grid id."""
    if "point" in trial.params:
        return trial.params["point"]
    fixed = trial.system_attrs.get("fixed_params") or {}
    if "point" in fixed:
        return fixed["point"]
    grid_id = trial.system_attrs.get("grid_id")
    return points[grid_id].name if grid_id is not None and grid_id < len(points) else None


SETTLED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def grid_progress(study: optuna.Study, points: list[Point]) -> dict[str, list[FrozenTrial]]:
    """Each point's trials (every state), in trial order."""
    by_point: dict[str, list[FrozenTrial]] = {p.name: [] for p in points}
    for t in study.get_trials(deepcopy=False):
        name = point_name(t, points)
        if name in by_point and not t.user_attrs.get("surplus"):
            by_point[name].append(t)
    return by_point


def next_step(study: optuna.Study, spec: SweepSpec, points: list[Point]) -> str:
    """What a worker does next: `run` a trial, `wait` for ones running elsewhere (a stale
    one is failed and queued again meanwhile), or stop (`done`)."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return "run"
    running = sum(t.state == TrialState.RUNNING for t in trials)
    if spec.is_grid:
        progress = grid_progress(study, points)
        if any(not ts for ts in progress.values()):
            return "run"
        unsettled = [ts for ts in progress.values() if not any(t.state in SETTLED for t in ts)
                     or any(t.state == TrialState.RUNNING for t in ts)]  # fmt: skip
        return "wait" if unsettled else "done"
    finished = sum(t.state in SETTLED and not _retried(t, trials) for t in trials)
    if finished >= spec.trials:
        return "done"
    return "wait" if finished + running >= spec.trials else "run"


def _retried(trial: FrozenTrial, trials: list[FrozenTrial]) -> bool:
    """A failed trial that a later trial repeats (its retry) counts once, as the retry."""
    return trial.state == TrialState.FAIL and any(
        trial.number in t.system_attrs.get("retry_history", []) for t in trials
    )


def queue_failed_points(study: optuna.Study, points: list[Point]) -> list[str]:
    """--resume: points whose every trial failed (an error, or retries used up) run again."""
    queued = []
    for name, trials in grid_progress(study, points).items():
        if trials and all(t.state == TrialState.FAIL for t in trials):
            study.enqueue_trial({"point": name})
            queued.append(name)
    return queued


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
