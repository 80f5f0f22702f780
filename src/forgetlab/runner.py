"""The sequential fine-tuning recipe: base model, then one stage per task, every task scored
after every stage, for each seed; results stored as they are produced.

Run directory layout (each file written atomically):

    <out>/config.yaml            resolved config
    <out>/metrics.json           all seeds: per-seed metrics and mean ± std ± 95% CI
    <out>/run.log
    <out>/seed-<s>/state.json    rows finished so far (what --resume continues from)
    <out>/seed-<s>/metrics.json, accuracy_matrix.csv
    <out>/seed-<s>/checkpoints/stage-<i>-<task>/  backbone (safetensors or PEFT adapter), heads
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

import forgetlab
from forgetlab.atomic import atomic_write_json, atomic_write_text, check_writable, read_json
from forgetlab.build import (  # noqa: F401 - build_model & co. are also imported from here
    ENCODER_TARGETS,
    build_model,
    calibration,
    decoder_targets,
    load_checkpoint,
    save_checkpoint,
    stage_dir,
)
from forgetlab.config import Config, config_to_yaml
from forgetlab.errors import ForgetlabError, TrainingDiverged
from forgetlab.evaluate import evaluate_task
from forgetlab.kinds import EvalContext
from forgetlab.methods import Method, MethodConfig, get_method, method_config
from forgetlab.methods.base import count_parameters
from forgetlab.metrics import (
    aggregate_metrics,
    continual_metrics,
    learning_flags,
    matrix_csv_text,
)
from forgetlab.models import load_tokenizer
from forgetlab.prepare import PreparedTask, prepare_tasks, subsample_split  # noqa: F401
from forgetlab.regularizers import build_regularizer
from forgetlab.store import ResultsStore
from forgetlab.train import StageStats, make_accelerator, train_stage

log = logging.getLogger("forgetlab")

# Keys that may differ between a run and its resumption (they do not change any number).
RESUME_IGNORED = {("output", "store"), ("training", "progress_bar"), ("training", "trackers")}


@dataclass
class RunResult:
    run_dir: Path
    config: Config
    metrics: dict  # the content of <run_dir>/metrics.json
    seed_metrics: dict[int, dict] = field(default_factory=dict)


BOUNDED_METRICS = ("accuracy", "exact_match", "pass@1")


# --------------------------------------------------------------------------------------
# one seed


def _eval_row(model, tasks, config, accelerator, pad_id, tokenizer=None) -> list[dict]:
    """Every task's scores (the sequence's tasks, then the probes) with the model as it is."""
    row = []
    for t in tasks:
        ctx = EvalContext(
            batch_size=config.eval.batch_size,
            accelerator=accelerator,
            pad_id=pad_id,
            tokenizer=tokenizer,
            eval_cfg=config.eval,
            extra_metrics=t.data.extra_metrics,
        )
        row.append(evaluate_task(model, t.name, t.kind, t.eval, ctx))
    return row


def eval_interval(every: float | None, total_steps: int) -> int | None:
    """eval.every as a step interval: N steps, or a fraction of the stage's steps."""
    if every is None:
        return None
    return int(every) if every >= 1 else max(1, round(every * total_steps))


def _curve_hook(config, state, stage, model, scored, accelerator, pad_id, tokenizer):
    """Evaluate every task and probe during training (eval.every): the learning and
    forgetting curves over training duration. Points land in state["curves"]; the stage's
    end is the matrix row itself, so it is not repeated here."""
    if config.eval.every is None:
        return None
    state.setdefault("curves", [])
    state["curves"] = [c for c in state["curves"] if c["stage"] != stage]  # a resumed stage

    def hook(step: int, total_steps: int) -> None:
        interval = eval_interval(config.eval.every, total_steps)
        if step % interval or step == total_steps:
            return
        row = _eval_row(model, scored, config, accelerator, pad_id, tokenizer)
        state["curves"].append(
            {"stage": stage, "step": step, "total_steps": total_steps,
             "scores": [cell["score"] for cell in row]}
        )  # fmt: skip
        _log_row(state["seed"], f"  step {step}/{total_steps}", scored, row)

    return hook


def _without_per_example(row: list[dict]) -> list[dict]:
    return [{k: v for k, v in cell.items() if k != "per_example"} for cell in row]


def seed_metrics(
    config: Config, tasks: list[PreparedTask], state: dict, probes: list[PreparedTask] = ()
) -> dict:
    """metrics.json of one seed: the score matrix (accuracy for classification), CL metrics,
    learning flags, and the probes' scores after every stage."""
    T = len(tasks)
    rows = state["rows"]
    R = [[cell["score"] for cell in row[:T]] for row in rows]
    majority = [t.majority for t in tasks]
    n_eval = [len(t.eval) for t in tasks]
    out = {
        "version": forgetlab.__version__,
        "seed": state["seed"],
        "method": config.method["name"],
        "model": config.model.name,
        "heads": config.heads,
        "tasks": [t.name for t in tasks],
        "eval_splits": [t.data.eval_split for t in tasks],
        "row_labels": ["base"] + [f"after {t.name}" for t in tasks[: len(rows) - 1]],
        # R[stage][task]: each task's score (higher is better): accuracy for classification
        # and multiple choice, −NLL per token for instruction and text tasks (see `metrics`)
        "accuracy_matrix": R,
        "metrics": [rows[0][j].get("metric", "accuracy") for j in range(T)],
        "scores": [_without_per_example(row[:T]) for row in rows],
        "majority_baseline": majority,
        "n_eval": n_eval,
        "stages": state["stages"],
        # eval.every: {stage, step, total_steps, scores (tasks then probes)} during training
        "curves": state.get("curves", []),
        "complete": len(rows) == T + 1,
        "trainable_parameters": state.get("trainable_parameters"),
        "total_parameters": state.get("total_parameters"),
    }
    if probes:
        out.update(probe_summary(probes, rows, T))
    if out["complete"]:
        bounded = all(m in BOUNDED_METRICS for m in out["metrics"])
        out.update(continual_metrics(np.array(R), bounded=bounded))
        pairs = [
            (rows[0][j]["per_example"], rows[j + 1][j]["per_example"])
            if "per_example" in rows[0][j]
            else None
            for j in range(T)
        ]
        out["learning"] = learning_flags(
            R, majority, n_eval, alpha=config.eval.alpha, per_example=pairs
        )
    return out


def probe_summary(probes: list[PreparedTask], rows: list[list[dict]], T: int) -> dict:
    """The source side: each probe's score after every stage, its floor (chance), and whether
    the base model was above it at all — only a probe the base model passes can show
    forgetting."""
    P = [[cell["score"] for cell in row[T:]] for row in rows]
    base = rows[0][T:]
    source = [_is_source(c) for c in base]
    changes = [P[-1][k] - P[0][k] for k in range(len(probes))]
    used = [c for c, keep in zip(changes, source) if keep]
    return {
        "probes": [t.name for t in probes],
        "probe_metrics": [c.get("metric") for c in base],
        "probe_matrix": P,
        "probe_baseline": [t.majority for t in probes],
        "probe_scores": [_without_per_example(row[T:]) for row in rows],
        # base above chance (one-sided exact binomial, MC probes); None: no chance level
        "probe_base_above_chance": [
            (c["p_value"] < 0.05) if "p_value" in c else None for c in base
        ],
        "probe_change": changes,
        # the probes that count as "what the model could do before": MC probes the base model
        # passes above chance, every perplexity probe, generation probes it scores above 0
        "probe_source": source,
        # source loss = −mean change of those probes' scores (NLL rise, accuracy drop)
        "source_loss": -float(np.mean(used)) if used else None,
    }


def _is_source(cell: dict) -> bool:
    if "p_value" in cell:
        return bool(cell["p_value"] < 0.05)
    return cell.get("metric") == "neg_nll" or cell["score"] > 0


def run_seed(
    config: Config,
    tasks: list[PreparedTask],
    method: Method,
    mcfg: MethodConfig,
    seed: int,
    out: Path,
    resume: bool,
    accelerator,
    pad_id: int,
    sources: list[PreparedTask] = (),
    probes: list[PreparedTask] = (),
    tokenizer=None,
) -> dict:
    seed_dir = out / f"seed-{seed}"
    scored = [*tasks, *probes]  # every row scores the sequence's tasks, then the probes
    state_path = seed_dir / "state.json"
    state = read_json(state_path) if resume and state_path.is_file() else None
    if state and len(state["rows"]) == len(tasks) + 1 and (seed_dir / "metrics.json").is_file():
        log.info("seed %d: already complete, skipped", seed)
        return read_json(seed_dir / "metrics.json")

    model = build_model(
        config,
        tasks,
        method,
        mcfg,
        seed,
        pad_id=pad_id,
        device=accelerator.device,
        sources=[*sources, *[p for p in probes if p.kind == "classification"]],
    )
    reg = build_regularizer(config.regularizer, model=model)  # fresh estimates per seed
    trainable, total = count_parameters(model)
    log.info(
        "seed %d: %s, %d of %d parameters trainable (%.2f%%)",
        seed,
        method.name,
        trainable,
        total,
        100 * trainable / total,
    )
    if state and len(state["rows"]) > 1:
        done = len(state["rows"]) - 1
        load_checkpoint(model, method, stage_dir(seed_dir, done, tasks[done - 1].name), reg)
        log.info("seed %d: resumed after stage %d (%s)", seed, done, tasks[done - 1].name)
    elif not state:
        state = {
            "seed": seed,
            "rows": [],
            "stages": [],
            "trainable_parameters": trainable,
            "total_parameters": total,
        }
        state["rows"].append(_eval_row(model, scored, config, accelerator, pad_id, tokenizer))
        atomic_write_json(state_path, state)
        _log_row(seed, "base", scored, state["rows"][-1])

    for stage in range(len(state["rows"]), len(tasks) + 1):
        task = tasks[stage - 1]
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
                source_data=source_data(config, tasks, stage, sources),
                on_step=_curve_hook(
                    config, state, stage, model, scored, accelerator, pad_id, tokenizer
                ),  # fmt: skip
            )
        except TrainingDiverged as e:
            raise TrainingDiverged(
                f"{e}. Finished stages are kept in {seed_dir} (--resume continues after them)"
            ) from e
        log.info(
            "seed %d stage %d %s: %d steps, loss %.4f -> %.4f, %.1f ex/s, %.0f tok/s",
            seed,
            stage,
            task.name,
            stats.steps,
            stats.first_loss or float("nan"),
            stats.final_loss or float("nan"),
            stats.examples_per_s,
            stats.tokens_per_s,
        )
        row = _eval_row(model, scored, config, accelerator, pad_id, tokenizer)
        if config.output.checkpoints != "none" or stage < len(tasks):
            save_checkpoint(model, method, stage_dir(seed_dir, stage, task.name), reg)
        state["rows"].append(row)
        state["stages"].append(stats.to_dict())
        atomic_write_json(state_path, state)  # the stage counts as done only from here
        _log_row(seed, f"after {task.name}", scored, row)
        _prune_checkpoints(config, seed_dir, tasks, stage)

    metrics = seed_metrics(config, tasks, state, probes)
    majority = metrics["majority_baseline"]
    atomic_write_text(
        seed_dir / "accuracy_matrix.csv",
        # The baseline rows let `forgetlab metrics` recompute the learned flags from the CSV.
        matrix_csv_text(
            metrics["tasks"],
            metrics["accuracy_matrix"],
            metrics["row_labels"],
            # loss-based scores have no floor: their learned test needs the per-example losses
            majority_baseline=None if None in majority else majority,
            n_eval=metrics["n_eval"],
            bounded=all(m in BOUNDED_METRICS for m in metrics["metrics"]),
        ),
    )
    atomic_write_json(seed_dir / "metrics.json", metrics)
    return metrics


def source_data(
    config: Config, tasks: list[PreparedTask], stage: int, sources: list[PreparedTask] = ()
) -> list:
    """What a regulariser may estimate old-task curvature from: the tasks (of the sequence or
    of `source_tasks`) that `regularizer.source` names, else the tasks before this stage."""
    names = (config.regularizer or {}).get("source")
    pool = [*tasks, *sources]
    chosen = [t for t in pool if t.name in names] if names else tasks[: stage - 1]
    return [(t.name, t.train) for t in chosen]


def _prune_checkpoints(config: Config, seed_dir: Path, tasks, stage: int) -> None:
    """checkpoints=last keeps only the newest stage (enough to resume); none keeps nothing
    once the run is complete."""
    mode = config.output.checkpoints
    if mode == "all":
        return
    for earlier in range(1, stage + (mode == "none" and stage == len(tasks))):
        if mode == "last" and earlier == stage:
            continue
        shutil.rmtree(stage_dir(seed_dir, earlier, tasks[earlier - 1].name), ignore_errors=True)


def _log_row(seed: int, label: str, tasks: list[PreparedTask], row: list[dict]) -> None:
    cells = "  ".join(f"{t.name}={_cell_text(c)}" for t, c in zip(tasks, row))
    log.info("seed %d %-14s %s", seed, label, cells)


def _cell_text(cell: dict) -> str:
    if cell.get("metric") == "neg_nll":
        return f"nll {cell['nll']:.3f}"
    return f"{cell['score']:.3f}"


# --------------------------------------------------------------------------------------
# the whole run


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


def _prepare_out_dir(config: Config, out: Path, resume: bool) -> None:
    check_writable(out)
    saved = out / "config.yaml"
    if resume:
        if not saved.is_file():
            raise ForgetlabError(f"cannot resume: {out} holds no run (no config.yaml)")
        diff = _diff_configs(yaml.safe_load(saved.read_text()) or {}, config.to_dict())
        if diff:
            raise ForgetlabError(f"cannot resume {out} with a different config: {diff}")
        return
    # A config.yaml alone is a run that failed before computing anything (e.g. a bad task
    # name): starting again over it loses nothing.
    if (out / "metrics.json").exists() or any(out.glob("seed-*")):
        raise ForgetlabError(
            f"{out} already holds a run; use --resume to continue it or choose another --out"
        )
    atomic_write_text(saved, config_to_yaml(config))


def _attach_log_file(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    return handler


def summarize(config: Config, tasks: list[PreparedTask], per_seed: dict[int, dict]) -> dict:
    """The run-level metrics.json: per-seed results and their mean ± std ± 95% CI."""
    complete = [m for m in per_seed.values() if m.get("complete")]
    matrices = np.array([m["accuracy_matrix"] for m in complete])
    learned = np.array([[f["learned"] for f in m["learning"]] for m in complete])
    return {
        "version": forgetlab.__version__,
        "name": config.name,
        "method": config.method["name"],
        "method_config": config.method,
        "regularizer": config.regularizer,
        "model": config.model.name,
        "heads": config.heads,
        "lr": config.training.lr,
        "tasks": [t.name for t in tasks],
        "eval_splits": [t.data.eval_split for t in tasks],
        "seeds": sorted(per_seed),
        "majority_baseline": [t.majority for t in tasks],
        "n_eval": [len(t.eval) for t in tasks],
        "accuracy_matrix": matrices.mean(0).tolist(),
        "accuracy_matrix_std": matrices.std(0, ddof=1).tolist() if len(complete) > 1 else None,
        "metrics": complete[0].get("metrics") if complete else None,
        # per task: in how many seeds R[j][j] was significantly above the majority baseline
        "learned_seeds": learned.sum(0).astype(int).tolist(),
        "aggregate": aggregate_metrics(complete),
        **_probe_means(complete),
        "per_seed": {str(s): m for s, m in per_seed.items()},
    }


def _probe_means(complete: list[dict]) -> dict:
    """The probes' score matrix averaged over seeds (their per-seed detail stays per seed)."""
    if not complete or "probes" not in complete[0]:
        return {}
    first = complete[0]
    P = np.array([m["probe_matrix"] for m in complete])
    return {
        "probes": first["probes"],
        "probe_metrics": first["probe_metrics"],
        "probe_baseline": first["probe_baseline"],
        "probe_base_above_chance": first["probe_base_above_chance"],
        "probe_matrix": P.mean(0).tolist(),
        "probe_change": (P[:, -1] - P[:, 0]).mean(0).tolist(),
        "probe_source": first["probe_source"],
    }


def run(config: Config, resume: bool = False) -> RunResult:
    """Run the sequential recipe for every seed in `config.seeds`; see the module docstring."""
    method = get_method(config.method["name"])
    mcfg = method_config(config.method)
    out = Path(config.output.dir)
    _prepare_out_dir(config, out, resume)
    handler = _attach_log_file(out)
    try:
        accelerator = make_accelerator(config.training, project_dir=str(out))
        if config.training.trackers:
            accelerator.init_trackers(config.name, config=_flat(config.to_dict()))
        tokenizer = load_tokenizer(config.model)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        tasks = prepare_tasks(config, tokenizer)
        # Source tasks subsample with their own seeds (offset past the sequence's indices).
        sources = prepare_tasks(config, tokenizer, config.source_tasks, offset=100)
        probes = prepare_tasks(config, tokenizer, config.probes, offset=200, trained=False)
        per_seed = {}
        for seed in config.seeds:
            per_seed[seed] = run_seed(
                config,
                tasks,
                method,
                mcfg,
                seed,
                out,
                resume,
                accelerator,
                pad_id,
                sources,
                probes,
                tokenizer,
            )
        summary = summarize(config, tasks, per_seed)
        atomic_write_json(out / "metrics.json", summary)
        ResultsStore(config.output.store).record_run(
            out,
            {k: v for k, v in summary.items() if k != "per_seed"},
            config.to_dict(),
            per_seed,
        )
        if config.training.trackers:
            accelerator.end_training()
        return RunResult(run_dir=out, config=config, metrics=summary, seed_metrics=per_seed)
    finally:
        log.removeHandler(handler)
        handler.close()


def _flat(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v if isinstance(v, int | float | str | bool) else str(v)
    return flat
