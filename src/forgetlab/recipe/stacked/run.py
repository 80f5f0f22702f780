"""Run K configs that differ only in values as one stack, writing K ordinary run directories.

Every (config, seed) pair is one trial; the trials of one seed train as one stack, seed after
seed (or all seeds in one stack: `by_seed=False`). The configs must be
equal but for the keys in `VALUE_KEYS` (what a rate sweep varies); the recipe is `run.py`'s
(the same tasks, row 0, one row per stage, the same files: config.yaml, state.json,
metrics.json, checkpoints, the matrix CSV), only the stages' training is stacked; a
regulariser that declares `stackable` (L2-to-init, EWC, Laplace) is each trial's own, at its
own λ. A trial that diverges stops alone: its seed's finished stages stay in its run
directory, as a lone run's would, and its result is the TrainingDiverged that run would have
raised. Every run directory's log.txt holds the whole stack's log. No --resume: a stack
starts afresh.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass

from forgetlab.atomic import check_writable
from forgetlab.config import Config
from forgetlab.errors import ConfigError, TrainingDiverged
from forgetlab.methods import METHODS, get_method, method_config
from forgetlab.methods.base import is_stackable
from forgetlab.models import load_tokenizer
from forgetlab.models.device import resolve_device
from forgetlab.models.loading import check_model_config
from forgetlab.recipe.build import build_run_model
from forgetlab.recipe.prepare import pad_token_id, prepare_run
from forgetlab.recipe.run import (
    RunResult,
    attach_log_file,
    base_state,
    diverged_in_run,
    finish_run,
    finish_seed,
    log_stage,
    prepare_out_dir,
    record_stage,
    source_data,
)
from forgetlab.recipe.stacked.layers import stack_models
from forgetlab.recipe.stacked.train import (
    Trial,
    check_stackable_kind,
    grows_per_stage,
    stack_for_stage,
    train_stacked_stage,
)
from forgetlab.recipe.train import make_accelerator
from forgetlab.regularizers import REGULARIZERS, build_regularizer
from forgetlab.rundir import RunDir

log = logging.getLogger("forgetlab")

# What may differ between stacked trials: values that change neither the model's shape nor
# the batches' layout, and where each run is written.
VALUE_KEYS = {
    ("name",),
    ("seeds",),
    ("training", "lr"),
    ("training", "weight_decay"),
    ("training", "warmup_steps"),
    ("training", "warmup_ratio"),
    ("training", "max_grad_norm"),
    ("regularizer", "lambda"),
    ("method", "lambda_orth"),  # O-LoRA's overlap weight: read by its penalty, per trial
    ("output", "dir"),
    ("output", "store"),
}


@dataclass
class StackedOutcome:
    """One config of a stack: its RunResult, or the TrainingDiverged of its first seed that
    diverged (the other seeds of that config trained on; their files are written)."""

    config: Config
    result: RunResult | None = None
    error: TrainingDiverged | None = None


def _flat(d: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def stack_difference(a: Config, b: Config) -> str | None:
    """Why configs `a` and `b` cannot stack (the first key that differs outside
    VALUE_KEYS), or None when they can."""
    fa, fb = _flat(a.to_dict()), _flat(b.to_dict())
    for key in sorted(set(fa) | set(fb), key=str):
        if key not in VALUE_KEYS and fa.get(key) != fb.get(key):
            return (
                f"{'.'.join(map(str, key))} is {fa.get(key)!r} in one, {fb.get(key)!r} in another"
            )
    return None


def stackable_methods() -> list[str]:
    """The methods whose class declares `stackable = True`, in registry order."""
    return [name for name, method in METHODS.items() if is_stackable(method)]


def check_stackable(configs: list[Config]) -> None:
    """ConfigError unless `configs` can train as one stack."""
    if not configs:
        raise ConfigError("stacked trials: no config given")
    first = configs[0]
    for other in configs[1:]:
        if (why := stack_difference(first, other)) is not None:
            raise ConfigError(f"stacked trials must differ only in values: {why}")
    method = get_method(first.method["name"])
    if not is_stackable(method):
        raise ConfigError(
            f"stacked trials: method {method.name} cannot be stacked (stackable: "
            f"{', '.join(stackable_methods())}); run its trials one by one"
        )
    reg = REGULARIZERS.get((first.regularizer or {}).get("name", "none"))
    if reg is not None and not reg.stackable:
        stackable = [name for name, r in REGULARIZERS.items() if r.stackable]
        raise ConfigError(
            f"stacked trials: regularizer {reg.name} cannot be stacked (stackable: "
            f"{', '.join(stackable)}); run its trials one by one"
        )
    refused = {
        "strategy": first.strategy,
        "guard": first.guard,
        "eval.every": first.eval.every,
        "training.trackers": first.training.trackers,
        # the cache holds one frozen output per example, a stack's rows are K trials' blocks
        "method.cache_frozen": first.method.get("cache_frozen"),
    }
    for key, value in refused.items():
        if value:
            raise ConfigError(f"stacked trials: {key} is not supported in a stack yet")
    if first.training.mixed_precision == "fp16":
        raise ConfigError("stacked trials: mixed_precision fp16 (loss scaling) does not stack")
    dirs = [c.output.dir for c in configs]
    if len(set(dirs)) != len(dirs):
        raise ConfigError("stacked trials: every config needs its own output.dir")


def run_stacked(configs: list[Config], by_seed: bool = True) -> list[StackedOutcome]:
    """Train every seed of every config stacked: one stack per seed (`by_seed`, the faster
    on a CPU: see `_groups`), or all in one; one outcome per config, in order."""
    check_stackable(configs)
    first = configs[0]
    resolve_device(first.training.device)
    check_model_config(first.model)
    outs = [RunDir(c.output.dir) for c in configs]
    with ExitStack() as held:
        for config, out in zip(configs, outs):
            check_writable(out.path)
            held.enter_context(out.lock())
            out.remove_stale_temp()
            prepare_out_dir(config, out, resume=False)
        for out in outs:
            handler = attach_log_file(out.log_path)
            held.callback(handler.close)
            held.callback(log.removeHandler, handler)
        return _run_stack(configs, outs, by_seed)


def _groups(owners: list[tuple[int, int]], by_seed: bool) -> list[list[int]]:
    """The stacks to train, one after another, as indices into `owners` ((config, seed) per
    trial). By seed: trials of one seed draw the same batch order, so their batches stack
    without padding to each other's lengths; 8 LoRA trials stacked ran 1.31x the speed of
    the 8 one after another with one seed, 0.44x with a seed each (benchmarks/stacked.py, 2
    CPU cores). Otherwise every trial in one stack."""
    if not by_seed:
        return [list(range(len(owners)))]
    groups: dict[int, list[int]] = {}
    for k, (_, seed) in enumerate(owners):
        groups.setdefault(seed, []).append(k)
    return list(groups.values())


def _run_stack(
    configs: list[Config], outs: list[RunDir], by_seed: bool = True
) -> list[StackedOutcome]:
    first = configs[0]
    accelerator = make_accelerator(first.training, project_dir=str(outs[0].path))
    tokenizer = load_tokenizer(first.model)
    pad_id = pad_token_id(tokenizer)
    run_tasks = prepare_run(first, tokenizer)
    for task in run_tasks.tasks:
        check_stackable_kind(task.kind)
    method, mcfg = get_method(first.method["name"]), method_config(first.method)
    scoring = (accelerator, pad_id, tokenizer)
    owners = [(i, seed) for i, c in enumerate(configs) for seed in c.seeds]
    states: dict[int, dict] = {}
    errors: dict[int, TrainingDiverged] = {}
    if accelerator.device.type == "cpu":  # measured: docs/stacked.md, "Speed"
        log.info(
            "stacked trials on a CPU: about the speed of the same trials one after another "
            "(the same FLOPs; docs/stacked.md); a stack pays on a GPU"
        )
    for members in _groups(owners, by_seed):
        trials, regs = [], {}
        for j, k in enumerate(members):
            i, seed = owners[k]
            model = build_run_model(
                configs[i], run_tasks, seed, pad_id=pad_id, device=accelerator.device
            )
            trials.append(Trial(model=model, training=configs[i].training, seed=seed,
                                method_cfg=method_config(configs[i].method)))  # fmt: skip
            if (reg := build_regularizer(configs[i].regularizer, model=model)) is not None:
                regs[j] = reg
            states[k] = base_state(configs[i], run_tasks, seed, outs[i], model, *scoring)
        log.info("stacking %d trials of %s", len(trials), method.name)
        per_stage = grows_per_stage(method)  # O-LoRA: a new adapter, so a new stack, a stage
        stack = None if per_stage else stack_models([t.model for t in trials])
        for stage, task in enumerate(run_tasks.tasks, start=1):
            alive = [j for j, k in enumerate(members) if k not in errors]
            if not alive:
                break
            if per_stage:
                stack = stack_for_stage(trials, method, mcfg, stage, task.name)
            results = train_stacked_stage(
                stack, trials, alive, method, mcfg, task.name, task.kind, task.train,
                accelerator, stage, pad_id, regs,
                source_data(first, run_tasks.tasks, stage, run_tasks.sources),
            )  # fmt: skip
            for j, outcome in results.items():
                k = members[j]
                i, seed = owners[k]
                if isinstance(outcome, TrainingDiverged):
                    errors[k] = diverged_in_run(outcome, outs[i], seed)
                    continue
                log_stage(seed, stage, outcome)
                record_stage(
                    configs[i], run_tasks, outs[i], states[k], stage, outcome, 0.0,
                    trials[j].model, method, regs.get(j), scoring,
                )  # fmt: skip
        del stack, trials, regs  # the next group's models replace this one's
    per_config: list[dict[int, dict]] = [{} for _ in configs]
    for k, (i, seed) in enumerate(owners):
        if k not in errors:
            per_config[i][seed] = finish_seed(configs[i], run_tasks, outs[i], states[k])
    outcomes = []
    for i, config in enumerate(configs):
        failed = [errors[k] for k, (j, _) in enumerate(owners) if j == i and k in errors]
        if failed:
            outcomes.append(StackedOutcome(config, error=failed[0]))
        else:
            outcomes.append(
                StackedOutcome(config, finish_run(config, run_tasks, outs[i], per_config[i]))
            )
    return outcomes
