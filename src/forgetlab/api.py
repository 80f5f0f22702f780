"""The Python API; the CLI is a thin shell over these functions."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from forgetlab import PACKAGE_API
from forgetlab.config import Config
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.malloc import check_setting as check_malloc_setting
from forgetlab.methods import METHODS
from forgetlab.metrics import metrics_from_csv  # noqa: F401 - the API re-exports it
from forgetlab.report.text import format_comparison, format_run  # noqa: F401 - format_run: re-exported
from forgetlab.resolve import load_config, variant_configs
from forgetlab.rundir import RunDir
from forgetlab.store import ResultsStore, record_result
from forgetlab.threads import check_setting


def run(config: Config | str | Path, resume: bool = False):
    """Run every seed of one sequential fine-tuning config; returns a `RunResult`.
    A config with `variants:` runs through `run_all`. Under a launcher's N processes (data
    parallel) only rank 0 writes the run directory and the store row; the other ranks train
    and evaluate in step with it, writing into a temporary directory removed afterwards (their
    RunResult's run_dir no longer exists); resuming, rank 0 reads the run directory and hands
    the other ranks its state and checkpoint."""
    # heavy imports (torch, transformers) on demand
    from forgetlab.recipe.data_parallel import process_rank
    from forgetlab.recipe.run import run as _run

    check_setting()  # a FORGETLAB_THREADS typo: import only warned
    check_malloc_setting()
    if not isinstance(config, Config):
        config = load_config(config)
    if config.variants:
        raise ConfigError("this config has variants: use forgetlab.run_all (one result each)")
    if process_rank() > 0:
        with tempfile.TemporaryDirectory(prefix=f"forgetlab-rank{process_rank()}-") as tmp:
            output = replace(config.output, dir=f"{tmp}/run", store=f"{tmp}/store.sqlite")
            return _run(replace(config, output=output), resume=resume)
    ResultsStore(config.output.store).check_target()  # before the run, not after it
    result = _run(config, resume=resume)
    # After the recipe: index the finished run in the results store (the run directory stays
    # the source of truth).
    record_result(result)
    return result


def run_all(config: Config | str | Path, resume: bool = False) -> list:
    """A plain config -> [RunResult]; a config with `variants:` -> one RunResult per variant."""
    if not isinstance(config, Config):
        config = load_config(config)
    children = [child for _, child in variant_configs(config)] or [config]
    return [run(child, resume=resume) for child in children]


def run_stacked(
    configs: list[Config | str | Path], resume: bool = False, by_seed: bool = True
) -> list:
    """Train every seed of every config in one process as one stacked model (see
    `forgetlab.recipe.stacked`): the configs differ only in values (learning rate, seeds,
    warm-up, weight decay, max_grad_norm), and each run directory ends with the numbers its
    lone run would have. A config with `variants:` contributes each variant. Returns one
    `StackedOutcome` per run, in order (`.result`: its RunResult, recorded in its results
    store; `.error`: the TrainingDiverged of a run whose training diverged — its other
    seeds and finished stages are kept). The trials of one seed train as one stack, seed
    after seed (their batches line up: the faster on a CPU); `by_seed=False` stacks every
    trial at once. `resume` is refused: a stack starts afresh."""
    from forgetlab.recipe.data_parallel import launched_processes
    from forgetlab.recipe.stacked.run import run_stacked as _run_stacked

    if launched_processes() > 1:
        raise ForgetlabError("stacked trials run in one process: drop --processes")
    if resume:
        raise ForgetlabError("stacked trials cannot resume: run the unfinished ones one by one")
    loaded = [c if isinstance(c, Config) else load_config(c) for c in configs]
    runs = [child for c in loaded for child in ([v for _, v in variant_configs(c)] or [c])]
    for config in runs:
        ResultsStore(config.output.store).check_target()
    outcomes = _run_stacked(runs, by_seed=by_seed)
    for outcome in outcomes:
        if outcome.result is not None:
            record_result(outcome.result)
    return outcomes


def load_run(run_dir: str | Path) -> dict:
    """The metrics.json of a finished run directory, checked to hold a run's summary
    (ForgetlabError names the file otherwise)."""
    return RunDir(run_dir).summary()


def compare(
    run_dirs: list[str | Path] | None = None,
    store: str | Path | None = None,
    fmt: str = "table",
    learning: str | None = None,
    forgetting: str | None = None,
) -> str:
    """A side-by-side table of finished runs, from their directories (a sweep directory: all
    its trials) or from a results store (a path or an SQLAlchemy URL), followed by what the
    run directories show together (`forgetlab.answers`: the best setting per method, the
    frontier, paired tests, and forgetting at matched learning when the runs span enough
    learning levels). fmt: table, or markdown / csv / json for the answers' tables alone.
    learning / forgetting: the answers' metrics; None: the objectives of the sweep
    directories given (as their answers.json), else `forgetlab.answers.answers`' defaults."""
    from forgetlab.answers import compare_answers

    if fmt not in ANSWER_FORMATS:
        raise ConfigError(f"format {fmt!r} is not one of {', '.join(ANSWER_FORMATS)}")
    sweep_learning, sweep_forgetting = _sweep_metrics(run_dirs or [])
    learning, forgetting = learning or sweep_learning, forgetting or sweep_forgetting
    dirs = _run_dirs(run_dirs or [])
    answers = compare_answers(dirs, fmt, learning=learning, forgetting=forgetting)
    if fmt != "table":
        return answers
    summaries = [load_run(d) for d in dirs]
    where = [str(d) for d in dirs]
    if store is not None:
        rows = ResultsStore(store).runs(must_exist=True)
        summaries += [r["metrics"] for r in rows]
        where += [r["run_dir"] for r in rows]
    table = format_comparison(summaries, where)
    return f"{table}\n\n{answers}" if answers else table


ANSWER_FORMATS = ("table", "markdown", "csv", "json")


def _sweep_metrics(dirs: list[str | Path]) -> tuple[str | None, str | None]:
    """(learning, forgetting) of the sweep directories' objectives when all of `dirs` are
    sweeps that agree on them; (None, None) otherwise (the answers' defaults)."""
    from forgetlab.sweeps.result import answer_metrics

    found = {answer_metrics(d) for d in dirs}
    return found.pop() if len(found) == 1 else (None, None)


def _run_dirs(dirs: list[str | Path]) -> list[Path]:
    """Run directories as given, a sweep directory replaced by its finished trials."""
    from forgetlab.sweeps.result import trial_run_dirs

    return [run for d in dirs for run in trial_run_dirs(d)]


def sweep(config: str | Path, overrides: list[str] | None = None, **options: Any):
    """Every trial of a sweep config (a run config plus `sweep:`) on Optuna; returns a
    `SweepResult`. Options: workers (1), storage (an SQLAlchemy URL shared by many machines),
    store, resume, quiet, backend (`processes` or `ray`), ray_address. See
    `forgetlab.sweeps.launch.run_sweep` and docs/sweeps.md."""
    from forgetlab.sweeps.launch import run_sweep

    return run_sweep(config, overrides, **options)


def analyze(run_dir: str | Path, which: list[str] | None = None, **options: Any) -> dict[str, dict]:
    """CKA drift, update spectrum, task similarity (and, for causal LMs, generation
    diversity) of a finished run — default: every analysis that applies — cached in
    <run_dir>/analyses/ and the results store. Options: seed, force, store, device, and
    `options` ({analysis name: its options}). See `forgetlab.analyses`."""
    from forgetlab.analyses import analyze as _analyze

    return _analyze(run_dir, which, **options)


def hessian(
    target: str | Path | Config,
    overrides: list[str] | None = None,
    **options: Any,
) -> dict:
    """Largest Hessian eigenvalue. `target`: a finished run directory (any saved `stage`), or a
    config file / Config (stage 0: the model at init, nothing written). Options: stage, task,
    group (trainable | modules | layers | a regex), examples, batch_size, method (lanczos |
    power), iters, tol, seed, force, store, device."""
    from forgetlab.analyses import hessian_eigenvalue as _hessian

    path = Path(target) if not isinstance(target, Config) else None
    if path is not None and not path.is_dir():
        target = load_config(path, overrides)
    elif overrides:
        raise ConfigError("overrides apply to a config, not to a finished run directory")
    return _hessian(target, **options)


def predict_lr(
    config: str | Path | Config,
    methods: list[str] | None,
    reference: str | dict[str, float],
    overrides: list[str] | None = None,
    runs: list[str | Path] | None = None,
    **options: Any,
) -> dict:
    """A learning rate per method from the loss Hessian at init: lr_m = lr_ref · λ_ref / λ_m,
    λ_max per definition (module: one adapted module, trainable: all adapter parameters,
    warmup: all after a few steps). `methods`: None takes a sweep config's sweep.methods.
    `reference`: METHOD=RATE (or {method: rate}), a method of `methods`. `runs`: finished
    runs of a grid (a sweep directory: its trials) for each method's swept best rate and
    which definition orders them. Options: definitions, module,
    warmup_steps, examples, batch_size, iters, rate_key, seed, device. See
    `forgetlab.analyses.predict_lr`; nothing is written."""
    from forgetlab.analyses.predict_lr import predict_lr as _predict
    from forgetlab.config import load_raw

    if isinstance(config, Config):
        if overrides:
            raise ConfigError("overrides apply to a config file, not to a loaded Config")
        raw = config.to_dict()
    else:
        raw = load_raw(config)
    sweep = raw.pop("sweep", None) or {}  # a sweep config: its run config, its methods
    methods = list(methods or sweep.get("methods") or [])
    if not methods:
        raise ConfigError("predict_lr needs methods (--methods lora,pissa,...)")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(
            f"unknown method {', '.join(unknown)} (known: {', '.join(sorted(METHODS))})"
        )
    configs = {
        m: load_config(raw=raw, overrides=[*(overrides or []), f"method.name={m}"]) for m in methods
    }
    return _predict(configs, reference, run_dirs=_run_dirs(runs or []), **options)


def lm_eval(target: str | Path, tasks: list[str], **options: Any) -> dict[str, dict]:
    """lm-evaluation-harness on a model: a finished run directory (its model after `stage`,
    default the last; base + adapter for LoRA-family runs), or a causal-LM name (hub id,
    local folder, packaged:smollm2). `tasks`: lm-eval task names (hub tasks need the hub), or
    forgetlab multiple-choice tasks (e.g. bb_date_understanding), which are written as local
    lm-eval tasks first — offline, and scored exactly as forgetlab's own scorer does.
    Options: stage, seed, limit, batch_size (8), include_path, device."""
    from forgetlab.harness.evaluate import evaluate_with_lm_eval

    return evaluate_with_lm_eval(target, tasks, **options)


def report(run_dirs: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    """One self-contained HTML page (figures inline, PNGs beside it) over finished runs (a
    sweep directory: all its trials; its Answers on the sweep's objectives, as compare)."""
    from forgetlab.report.page import build_report

    learning, forgetting = _sweep_metrics(run_dirs)
    metrics = {"learning": learning, "forgetting": forgetting}
    return build_report(_run_dirs(run_dirs), Path(out), title=title, metrics=metrics)


def list_methods() -> dict[str, str]:
    return {name: m.summary for name, m in sorted(METHODS.items())}


# the package's own names (forgetlab.analyze, ...) and two that only this module exports
__all__ = [*PACKAGE_API, "lm_eval", "load_run"]
