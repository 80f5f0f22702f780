"""`forgetlab sweep --backend ray`: the sweep's trials as Ray tasks, on the same Optuna study.

A Ray task runs one trial exactly as a worker process does (`workers.run_one`: Optuna asks,
the trial runs as an ordinary run directory, Optuna is told), so the study in its RDB storage
stays the record of truth: heartbeats and retries, pruning, `--resume`, sweep.json and
answers.json are the default backend's. Ray only places the trials: each task asks for
`sweep.resources` (`{cpu: 1, gpu: 0.25}`: four trials share one GPU) and runs where they are
free. The driver keeps `lanes` tasks in flight (by default as many as the cluster holds at
once); a lane ends when its task finds no trial left to run.

Ray loads here only, and only when this backend is asked for (`import_ray`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.sweeps.spec import Resources
from forgetlab.sweeps.trial import load_sweep_config
from forgetlab.sweeps.workers import (
    cores,
    open_study,
    run_one,
    set_up_worker,
    thread_env,
    wait_for_trial,
)

log = logging.getLogger("forgetlab")

MISSING = "ray is not installed: pip install forgetlab[ray]"
OBJECT_STORE_BYTES = 100 * 1024**2


def import_ray() -> ModuleType:
    # Read when ray loads: every trial's line as it is, not folded into "[repeated 3x across
    # cluster]" with other trials' lines. RAY_DEDUP_LOGS=1 in the environment folds them.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
    except ImportError:
        raise ForgetlabError(MISSING) from None
    return ray


def trials_at_once(nodes: list[dict[str, Any]], resources: Resources) -> int:
    """How many trials the cluster's live nodes hold at once; a request that no node can
    hold is refused here (Ray itself would wait for such a node forever)."""
    fits, most_cpu, most_gpu = 0, 0.0, 0.0
    for node in nodes:
        if not node.get("Alive", True):
            continue
        have = node.get("Resources", {})
        cpu, gpu = float(have.get("CPU", 0)), float(have.get("GPU", 0))
        most_cpu, most_gpu = max(most_cpu, cpu), max(most_gpu, gpu)
        n = math.floor(cpu / resources.cpu + 1e-9)
        if resources.gpu > 0:
            n = min(n, math.floor(gpu / resources.gpu + 1e-9))
        fits += n
    if fits:
        return fits
    if resources.gpu > 0 and most_gpu == 0:
        raise ConfigError(
            f"sweep.resources.gpu={resources.gpu:g}: the Ray cluster has no GPU (set "
            "sweep.resources.gpu=0, or give --ray-address of a cluster with GPUs)"
        )
    raise ConfigError(
        f"sweep.resources asks cpu={resources.cpu:g} gpu={resources.gpu:g} per trial; no Ray "
        f"node has that much (the largest: {most_cpu:g} CPU, {most_gpu:g} GPU)"
    )


@contextmanager
def ray_session(
    resources: Resources, address: str | None, lanes: int | None = None, quiet: bool = False
) -> Iterator[Callable[[Path, str, str, str], list[int]]]:
    """Start (or join) Ray and check that a trial's `resources` fit a node; yields
    `run_trials(sweep_file, url, study_name, store)`, which runs the study's trials as Ray
    tasks until none is left and returns one exit code per lane (0, or 1 where a task failed
    outside its trial, e.g. a Ray worker that died: that lane stops, as a crashed worker
    process does, and --resume retries its trial). Ray is shut down on the way out, on an
    error or Ctrl-C too.

    address: a running Ray cluster (`auto`, `ray://host:10001`); None starts a local Ray
    with this machine's cores, in a temporary directory removed at the end. A Ray set up by
    the caller (`ray.init` before `forgetlab.sweep`) is used as it is and left running.
    lanes: the tasks in flight at once (default: as many as the cluster's nodes hold).
    """
    ray = import_ray()
    started, temp = _start(ray, address)
    codes: list[int] = []

    def run_trials(sweep_file: Path, url: str, study_name: str, store: str) -> list[int]:
        args = (str(Path(sweep_file).resolve()), url, study_name, store, os.getcwd(), quiet)
        codes[:] = _run_tasks(ray, args, resources, lanes or fits)
        return list(codes)

    try:
        fits = trials_at_once(ray.nodes(), resources)  # refused before anything runs
        yield run_trials
    finally:
        if started:
            ray.shutdown()
            if temp is not None and not any(codes):
                shutil.rmtree(temp, ignore_errors=True)
            elif temp is not None:  # a task failed outside its trial: Ray's logs say why
                log.warning("ray: its logs are kept in %s", temp)


def _run_tasks(ray: ModuleType, args: tuple, resources: Resources, lanes: int) -> list[int]:
    """Keep `lanes` trial tasks in flight until each lane's last finds no trial left."""
    task = ray.remote(
        name="forgetlab-trial",
        num_cpus=resources.cpu,
        num_gpus=resources.gpu,
        max_retries=0,  # a retry is Optuna's (heartbeat, same run directory), not Ray's
        runtime_env={"env_vars": thread_env(resources.threads)},  # before torch loads
        # A GPU trial gets a fresh worker process, which hands back the device memory that
        # torch's caching allocator holds; CPU trials reuse theirs (torch loads once).
        max_calls=1 if resources.gpu > 0 else 0,
    )(_trial_task)
    log.info("ray: %d trial(s) at once, cpu %g gpu %g each", lanes, resources.cpu,
             resources.gpu)  # fmt: skip
    codes = [0] * lanes
    pending = {task.remote(*args): lane for lane in range(lanes)}
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            lane = pending.pop(ref)
            try:
                ran = ray.get(ref)
            except ray.exceptions.RayError as e:
                codes[lane] = 1
                log.error("ray: a task of lane %d failed: %s", lane, _first_line(e))
                continue
            if ran:
                pending[task.remote(*args)] = lane
        return codes
    except BaseException:  # Ctrl-C too: the running trials stop; --resume retries them
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def _start(ray: ModuleType, address: str | None) -> tuple[bool, str | None]:
    """Start (or connect to) Ray unless the caller did; (started here?, its temp dir)."""
    if ray.is_initialized():
        return False, None
    # No usage report from a sweep (the machines may be offline); RAY_USAGE_STATS_ENABLED=1
    # in the environment turns it back on.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's own warnings (e.g. that the local Ray it starts uses token authentication) would
    # bury the trials' lines; its errors still show.
    options = {"log_to_driver": True, "logging_level": logging.ERROR}
    if address is not None:
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ForgetlabError(f"cannot connect to Ray at {address}: {_first_line(e)}") from e
        return True, None
    # Ray's session files (sockets, logs, spilled objects) go to a fresh folder of the
    # system's temp dir, not /tmp/ray, and are removed when the sweep ends well.
    temp = tempfile.mkdtemp(prefix="forgetlab-ray-")
    ray.init(
        num_cpus=cores(),
        include_dashboard=False,
        _temp_dir=temp,
        # Tasks pass a few strings, results a bool: Ray's minimum object store, not its default
        # 30% of memory (which falls back to files in the temp dir where /dev/shm is small).
        object_store_memory=OBJECT_STORE_BYTES,
        **options,
    )
    return True, temp


def _first_line(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e  # a RayTaskError carries the task's exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")


# A Ray worker process runs many tasks: the sweep config is read and the study opened once.
_OPENED: dict[tuple, tuple] = {}


def _trial_task(
    sweep_file: str, url: str, study_name: str, store: str, cwd: str, quiet: bool
) -> bool:
    """One trial in a Ray worker, as workers.work runs one; False when none was left."""
    if Path(cwd).is_dir():  # relative paths of the config (data files, a store) as the
        os.chdir(cwd)  # driver reads them, as worker processes do; a Ray worker starts elsewhere
    text = Path(sweep_file).read_bytes()
    key = (sweep_file, hashlib.sha256(text).hexdigest(), url, study_name, store)
    if key not in _OPENED:
        set_up_worker(quiet, tag="")  # Ray prefixes the lines with the task and its pid
        sweep = load_sweep_config(sweep_file)
        _OPENED[key] = open_study(sweep, url, study_name, store, attrs={"backend": "ray"})
    study, objective = _OPENED[key]
    if not wait_for_trial(study, objective.sweep.spec, objective.points):
        return False
    run_one(study, objective)
    return True
