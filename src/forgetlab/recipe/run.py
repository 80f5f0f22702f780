"""The sequential fine-tuning recipe, top to bottom: prepare the tasks, then for each seed
build the model, score the base model (row 0), and for each task train one stage and score
every task and probe again (one row per stage); summarise each seed and the run.

Each step lives in its own module beside this one, in the order a run happens:
prepare.py (tasks) -> build.py (model, checkpoints) -> train.py (one stage) -> evaluate.py
(one row) -> summary.py (metrics.json). The run directory's layout is `forgetlab.rundir`;
every file is written atomically. Recording the run in the results store is the caller's
step (`forgetlab.api.run`), after the recipe.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from forgetlab.atomic import atomic_write_json, atomic_write_text, check_writable
from forgetlab.config import Config, config_to_yaml
from forgetlab.errors import ForgetlabError, TrainingDiverged
from forgetlab.methods import get_method, method_config
from forgetlab.methods.base import count_parameters
from forgetlab.models import load_tokenizer
from forgetlab.models.device import resolve_device
from forgetlab.models.loading import check_model_config
from forgetlab.recipe.build import (
    build_run_model,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from forgetlab.recipe.data_parallel import process_rank, share_resume
from forgetlab.recipe.evaluate import CurveCallback, CurveHook, eval_row, log_row
from forgetlab.recipe.guard import StageGuard
from forgetlab.recipe.prepare import PreparedTask, RunTasks, pad_token_id, prepare_run
from forgetlab.recipe.summary import seed_matrix_csv, seed_metrics, summarize
from forgetlab.recipe.train import StageStats, make_accelerator, train_stage
from forgetlab.regularizers import build_regularizer
from forgetlab.rundir import RunDir
from forgetlab.strategies import EarlierTask, build_strategies
from forgetlab.version import __version__

log = logging.getLogger("forgetlab")

# Keys that may differ between a run and its resumption (they do not change any number).
RESUME_IGNORED = {("output", "store"), ("training", "progress_bar"), ("training", "trackers")}


@dataclass
class RunResult:
    run_dir: Path
    config: Config
    metrics: dict  # the content of <run_dir>/metrics.json
    seed_metrics: dict[int, dict] = field(default_factory=dict)


def run(config: Config, resume: bool = False, on_curve: CurveCallback | None = None) -> RunResult:
    """Run the sequential recipe for every seed in `config.seeds`; see the module docstring.
    `on_curve` sees every eval.every point as it is measured (see `CurveHook`)."""
    resolve_device(config.training.device)  # cuda without a GPU: refused, not run on CPU
    check_model_config(config.model)  # max_length, model.type: refused before any file
    out = RunDir(config.output.dir)
    check_writable(out.path)
    with out.lock():
        return _run_locked(config, out, resume, on_curve)


def _run_locked(
    config: Config, out: RunDir, resume: bool, on_curve: CurveCallback | None
) -> RunResult:
    stale = out.remove_stale_temp()  # a killed writer's half-written files (we hold the lock)
    prepare_out_dir(config, out, resume and process_rank() == 0)  # rank 0 checks for all
    if stale:
        log.info("removed %d half-written temporary file(s) of an earlier run", len(stale))
    handler = attach_log_file(out.log_path)
    try:
        accelerator = make_accelerator(config.training, project_dir=str(out.path))
        if config.training.trackers:
            accelerator.init_trackers(config.name, config=_flat(config.to_dict()))
        tokenizer = load_tokenizer(config.model)
        pad_id = pad_token_id(tokenizer)
        run_tasks = prepare_run(config, tokenizer)
        per_seed = {
            seed: run_seed(
                config, run_tasks, seed, out, resume, accelerator, pad_id, tokenizer, on_curve
            )
            for seed in config.seeds
        }
        result = finish_run(config, run_tasks, out, per_seed)
        if config.training.trackers:
            accelerator.end_training()
        return result
    finally:
        log.removeHandler(handler)
        handler.close()


def finish_run(
    config: Config, run_tasks: RunTasks, out: RunDir, per_seed: dict[int, dict]
) -> RunResult:
    """Write the run's metrics.json from its seeds' metrics."""
    summary = summarize(config, run_tasks.tasks, per_seed)
    atomic_write_json(out.metrics_path, summary)
    return RunResult(run_dir=out.path, config=config, metrics=summary, seed_metrics=per_seed)


def run_seed(
    config: Config,
    run_tasks: RunTasks,
    seed: int,
    out: RunDir,
    resume: bool,
    accelerator,
    pad_id: int,
    tokenizer=None,
    on_curve: CurveCallback | None = None,
) -> dict:
    """One seed: build, score the base model, then train and score stage by stage. The
    seed's state.json is written after every row, so --resume continues after the last."""
    tasks, scored = run_tasks.tasks, run_tasks.scored
    state = out.state(seed) if resume else None
    if resume and accelerator.num_processes > 1:  # rank 0's state and checkpoint, on every rank
        state = share_resume(out, seed, state, [t.name for t in tasks], accelerator)
    if state and len(state["rows"]) == len(tasks) + 1:
        if out.seed_metrics_path(seed).is_file():
            log.info("seed %d: already complete, skipped", seed)
            return out.seed_metrics(seed)
        # every row is recorded (the run died after its last state.json write): the seed's
        # metrics come from state.json alone, no checkpoint needed (output.checkpoints: none)
        log.info("seed %d: every row recorded; writing its metrics", seed)
        return finish_seed(config, run_tasks, out, state)

    # 1. build the model (and the regulariser and strategies: fresh estimates per seed)
    method, mcfg = get_method(config.method["name"]), method_config(config.method)
    model = build_run_model(config, run_tasks, seed, pad_id=pad_id, device=accelerator.device)
    reg = build_regularizer(config.regularizer, model=model)
    strategies = build_strategies(config.strategy)
    trainable, total = count_parameters(model)
    log.info(
        "seed %d: %s, %d of %d parameters trainable (%.2f%%)",
        seed,
        method.name,
        trainable,
        total,
        100 * trainable / total,
    )
    # 2. row 0: the base model (or, resuming, the model after the last finished stage)
    if state and len(state["rows"]) > 1:
        done = len(state["rows"]) - 1
        load_checkpoint(model, method, out.checkpoint_dir(seed, done, tasks[done - 1].name), reg)
        log.info("seed %d: resumed after stage %d (%s)", seed, done, tasks[done - 1].name)
    elif not state:
        state = base_state(config, run_tasks, seed, out, model, accelerator, pad_id, tokenizer)

    # 3. one stage per task: train, score every task and probe, checkpoint, record the row
    for stage in range(len(state["rows"]), len(tasks) + 1):
        task = tasks[stage - 1]
        curves = CurveHook(
            config, state, stage, model, scored, accelerator, pad_id, tokenizer, on_curve
        )
        guard = config.guard and StageGuard(
            config.guard,
            state,
            stage,
            model,
            run_tasks,
            lambda todo: eval_row(model, todo, config, accelerator, pad_id, tokenizer),
        )
        hooks = [h for h in (curves if config.eval.every is not None else None, guard) if h]
        try:
            stats: StageStats = train_stage(
                model,
                method,
                mcfg,
                task.name,
                task.kind,
                task.train,
                config.training,
                accelerator,
                seed=seed,
                stage=stage,
                pad_id=pad_id,
                regularizers=[reg] if reg else [],
                source_data=source_data(config, tasks, stage, run_tasks.sources),
                strategies=strategies,
                earlier_tasks=[EarlierTask(t.name, t.kind, t.train) for t in tasks[: stage - 1]],
                on_step=_step_hooks(hooks),
            )
        except TrainingDiverged as e:
            raise diverged_in_run(e, out, seed) from e
        log_stage(seed, stage, stats)
        # eval_s: every evaluation of this stage (the curve points and guard checks during it,
        # the row after it) — the cost a sweep pays
        eval_s = curves.eval_s + (guard.eval_s if guard else 0.0)
        record_stage(
            config,
            run_tasks,
            out,
            state,
            stage,
            stats,
            eval_s,
            model,
            method,
            reg,
            (accelerator, pad_id, tokenizer),
        )

    # 4. the seed's metrics
    return finish_seed(config, run_tasks, out, state)


def diverged_in_run(error: TrainingDiverged, out: RunDir, seed: int) -> TrainingDiverged:
    """A stage's TrainingDiverged as the run reports it: where its finished stages are."""
    return TrainingDiverged(
        f"{error}. Finished stages are kept in {out.seed_dir(seed)} (--resume continues after them)"
    )


def log_stage(seed: int, stage: int, stats: StageStats) -> None:
    log.info(
        "seed %d stage %d %s: %d steps, loss %.4f -> %.4f, %.1f ex/s, %.0f tok/s",
        seed,
        stage,
        stats.task,
        stats.steps,
        stats.first_loss or float("nan"),
        stats.final_loss or float("nan"),
        stats.examples_per_s,
        stats.tokens_per_s,
    )


def base_state(
    config: Config,
    run_tasks: RunTasks,
    seed: int,
    out: RunDir,
    model,
    accelerator,
    pad_id: int,
    tokenizer=None,
) -> dict:
    """A new seed's state.json: the model's parameter counts and row 0 (the model before any
    training), written before it is returned."""
    trainable, total = count_parameters(model)
    state = {
        "version": __version__,
        "seed": seed,
        "rows": [],
        "stages": [],
        "trainable_parameters": trainable,
        "total_parameters": total,
        # what training.mixed_precision resolved to on this machine (auto: bf16 or no)
        "precision": accelerator.mixed_precision,
    }
    start = time.perf_counter()
    state["rows"].append(eval_row(model, run_tasks.scored, config, accelerator, pad_id, tokenizer))
    state["base_eval_s"] = time.perf_counter() - start
    atomic_write_json(out.state_path(seed), state)
    log_row(seed, "base", run_tasks.scored, state["rows"][-1])
    return state


def record_stage(
    config: Config,
    run_tasks: RunTasks,
    out: RunDir,
    state: dict,
    stage: int,
    stats: StageStats,
    eval_s: float,
    model,
    method,
    reg,
    scoring: tuple,
) -> None:
    """After stage `stage` trained: score its row, save its checkpoint, append the row and the
    stage's stats to state.json (the stage counts as done only from then on) and prune older
    checkpoints. `eval_s`: evaluation time already spent during the stage; `scoring`:
    (accelerator, pad_id, tokenizer) for `eval_row`."""
    tasks, seed, task = run_tasks.tasks, state["seed"], run_tasks.tasks[stage - 1]
    start = time.perf_counter()
    row = eval_row(model, run_tasks.scored, config, *scoring)
    # train_s: the training loop alone
    timing = {"train_s": stats.wall_s, "eval_s": eval_s + time.perf_counter() - start}
    log.info(
        "seed %d stage %d: evaluation %.1f s = %.0f%% of training time",
        seed,
        stage,
        timing["eval_s"],
        100 * timing["eval_s"] / max(timing["train_s"], 1e-9),
    )
    if config.output.checkpoints != "none" or stage < len(tasks):
        save_checkpoint(model, method, out.checkpoint_dir(seed, stage, task.name), reg)
    state["rows"].append(row)
    state["stages"].append({**stats.to_dict(), **timing})
    atomic_write_json(out.state_path(seed), state)
    log_row(seed, f"after {task.name}", run_tasks.scored, row)
    _prune_checkpoints(config, out, seed, tasks, stage)


def finish_seed(config: Config, run_tasks: RunTasks, out: RunDir, state: dict) -> dict:
    """Write a seed's metrics.json and matrix CSV from its state.json rows."""
    metrics = seed_metrics(config, run_tasks.tasks, state, run_tasks.probes)
    atomic_write_text(out.matrix_csv_path(state["seed"]), seed_matrix_csv(metrics))
    atomic_write_json(out.seed_metrics_path(state["seed"]), metrics)
    return metrics


def _step_hooks(hooks: list) -> Callable[[int, int], bool] | None:
    """train_stage's one `on_step`: every hook runs (the curve point, then the guard); any
    true return ends the stage."""
    if not hooks:
        return None
    return lambda step, total_steps: any([hook(step, total_steps) for hook in hooks])


def source_data(
    config: Config, tasks: list[PreparedTask], stage: int, sources: list[PreparedTask] = ()
) -> list:
    """What a regulariser may estimate old-task curvature from: the tasks (of the sequence or
    of `source_tasks`) that `regularizer.source` names, else the tasks before this stage."""
    names = (config.regularizer or {}).get("source")
    pool = [*tasks, *sources]
    chosen = [t for t in pool if t.name in names] if names else tasks[: stage - 1]
    return [(t.name, t.train) for t in chosen]


def _prune_checkpoints(
    config: Config, out: RunDir, seed: int, tasks: list[PreparedTask], stage: int
) -> None:
    """checkpoints=last keeps only the newest stage (enough to resume); none keeps nothing
    once the run is complete."""
    mode = config.output.checkpoints
    if mode == "all":
        return
    for earlier in range(1, stage + (mode == "none" and stage == len(tasks))):
        if mode == "last" and earlier == stage:
            continue
        shutil.rmtree(
            out.checkpoint_dir(seed, earlier, tasks[earlier - 1].name), ignore_errors=True
        )


def _diff_configs(old: dict, new: dict, prefix: tuple = ()) -> str | None:
    for key in sorted(set(old) | set(new)):
        path = prefix + (key,)
        if path in RESUME_IGNORED or path == ("output", "dir"):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff = _diff_configs(a, b, path)
            if diff:
                return diff
        elif a != b:
            return f"{'.'.join(path)} was {a!r}, now {b!r}"
    return None


def prepare_out_dir(config: Config, out: RunDir, resume: bool) -> None:
    if resume and not out.config_path.is_file():
        if not out.path.is_dir() or out.holds_results():  # a typo'd --out; or not ours
            raise ForgetlabError(f"cannot resume: {out.path} holds no run (no config.yaml)")
        # Killed while starting, before its config.yaml: nothing was computed, so resuming
        # it is starting it.
        log.warning("nothing to resume in %s yet: the run starts from the beginning", out.path)
        resume = False
    if resume:
        diff = _diff_configs(out.saved_config(), config.to_dict())
        if diff:
            raise ForgetlabError(f"cannot resume {out.path} with a different config: {diff}")
        _check_resumable(config, out)
        return
    if out.holds_results():
        raise ForgetlabError(
            f"{out.path} already holds a run; use --resume to continue it or choose another --out"
        )
    atomic_write_text(out.config_path, config_to_yaml(config))


def _check_resumable(config: Config, out: RunDir) -> None:
    """Before --resume writes anything (its log line included): every file it continues from
    reads whole — metrics.json, each seed's state.json, a finished seed's metrics.json, the
    checkpoint it loads (its checksums) — else ForgetlabError names the file and nothing changed."""
    names = config.task_names
    if out.metrics_path.is_file():  # written once every seed finished: a whole summary
        out.summary()
    for seed in config.seeds:
        state = out.state(seed)
        done = len(state["rows"]) - 1 if state else 0
        if done > len(names):
            raise ForgetlabError(
                f"{out.state_path(seed)} is damaged: {done} stages recorded for {len(names)} tasks"
            )
        if done == len(names):
            if out.seed_metrics_path(seed).is_file():
                out.seed_metrics(seed)
        elif done > 0:
            verify_checkpoint(out.checkpoint_dir(seed, done, names[done - 1]))


def attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    return handler


def _flat(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v if isinstance(v, int | float | str | bool) else str(v)
    return flat
