"""`forgetlab` command line: a thin shell over `forgetlab.api`.

User errors (ForgetlabError) print one line and exit 2; anything else is a bug and prints a
traceback. `--debug` shows tracebacks for user errors too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from types import ModuleType

from forgetlab.errors import ForgetlabError
from forgetlab.malloc import check_setting as check_malloc_setting
from forgetlab.threads import check_setting


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other error (argparse prints its
    whole usage block first); `forgetlab <command> --help` still shows the usage."""

    def error(self, message: str):
        self.exit(2, f"forgetlab: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from forgetlab.analyses import ANALYSES, HESSIAN

    p = _Parser(
        prog="forgetlab",
        description="Fine-tune pretrained models and measure what each method learns and forgets.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a sequential fine-tuning config")
    r.add_argument("config", help="YAML config file")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.lr=3e-4")
    r.add_argument("--out", help="output run directory (same as output.dir=...)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run")
    r.add_argument("--quiet", action="store_true", help="no progress bars or per-stage lines")
    r.add_argument(
        "--stack",
        action="store_true",
        help="train the config's seeds and variants (differing only in values: lr, seeds, "
        "warm-up, weight decay) as one stacked model in this process, one stack per seed",
    )
    r.add_argument(
        "--stack-seeds",
        action="store_true",
        help="stack every seed too, all in one stack (implies --stack; a config's `seeds:` "
        "alone then stack). On a CPU one stack per seed is the faster: trials of different "
        "seeds pad to each other's lengths",
    )
    r.add_argument(
        "--processes",
        type=int,
        help="data-parallel over N processes on this machine (torchrun; gloo on CPU): each "
        "trains on its shard of every batch, only the first writes",
    )

    c = sub.add_parser("compare", help="side-by-side table of finished runs")
    c.add_argument("run_dirs", nargs="*", help="run directories (a sweep directory: its trials)")
    c.add_argument(
        "--store", help="also list every run of this results store (a path or SQLAlchemy URL)"
    )
    c.add_argument(
        "--format",
        choices=["table", "markdown", "csv", "json"],
        default="table",
        help="table (default): the comparison, then what the runs show; markdown, csv, json: "
        "the answers' tables only (best setting per method, frontier, matched learning, "
        "paired tests), for a paper or pandas",
    )
    c.add_argument(
        "--learning",
        choices=["initial_acc", "target_gain", "acc"],
        help="the answers' learning metric (default: a sweep directory's objective, else "
        "initial_acc; target_gain for decoder runs of one task with probes)",
    )
    c.add_argument(
        "--forgetting",
        choices=["avg_forgetting", "max_forgetting", "chaudhry_forgetting", "source_loss"],
        help="the answers' forgetting metric (default: a sweep directory's objective, else "
        "avg_forgetting; source_loss for decoder runs of one task with probes)",
    )

    _sweep_parser(sub)

    m = sub.add_parser("metrics", help="continual-learning metrics of an accuracy matrix CSV")
    m.add_argument("csv", help="CSV: header stage,<task...>; rows base, stage1..stageT")
    m.add_argument("--alpha", type=float, default=0.05, help="level of the learned test")

    v = sub.add_parser("validate", help="check a config without running it")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*")

    a = sub.add_parser(
        "analyze",
        help="CKA drift, update spectrum, task similarity (and generation diversity) of runs",
        description="No analysis flag: every analysis that applies to the run (diversity only "
        "for causal LM runs).",
    )
    a.add_argument("run_dirs", nargs="+", help="finished run directories")
    for module in ANALYSES.values():
        a.add_argument(f"--{module.NAME}", action="store_true", help=module.FLAG)
    _add_options(a, list(ANALYSES.values()), named=True)
    _analysis_common(a)

    h = sub.add_parser("hessian", help="largest Hessian eigenvalue (Lanczos / power iteration)")
    h.add_argument("target", help="a finished run directory, or a config (stage 0 = init)")
    h.add_argument("overrides", nargs="*", help="dotted overrides (for a config)")
    _add_options(h, [HESSIAN], named=False)
    h.add_argument("--json", action="store_true", help="print the result as JSON")
    _analysis_common(h)

    _predict_lr_parser(sub)

    e = sub.add_parser("eval", help="score a run's model (or any causal LM) with lm-eval")
    e.add_argument("target", help="a finished run directory, or a causal-LM name / folder")
    e.add_argument(
        "--lm-eval",
        required=True,
        dest="lm_eval",
        help="comma-separated tasks: lm-eval names (hellaswag, arc_challenge, winogrande: "
        "need the hub) or forgetlab multiple-choice tasks (bb_*), run offline",
    )
    e.add_argument("--stage", type=int, help="the run's model after this stage (default: last)")
    e.add_argument("--seed", type=int)
    e.add_argument("--limit", type=int, help="examples per task")
    e.add_argument("--batch-size", type=int, default=8, dest="batch_size")
    e.add_argument("--include-path", dest="include_path", help="folder of local lm-eval tasks")
    e.add_argument("--device")
    _trust_flag(e)

    rp = sub.add_parser("report", help="one self-contained HTML page over finished runs")
    rp.add_argument("run_dirs", nargs="+", help="finished run directories")
    rp.add_argument("--out", required=True, help="the HTML file (PNGs go beside it)")
    rp.add_argument("--title", help="page title")
    rp.add_argument("--screenshot", help="also save a PNG of the page top (needs chromium)")
    rp.add_argument("--screenshot-height", type=int, default=1600, help="pixels (default 1600)")

    sub.add_parser(
        "methods", help="list the methods and regularisers: their keys, defaults and papers"
    )
    t = sub.add_parser(
        "tasks", help="list the tasks: kind, split sizes, majority or chance level, source"
    )
    t.add_argument("config", nargs="?", help="a config: its tasks, source tasks and probes")
    t.add_argument("overrides", nargs="*", help="dotted overrides (for a config)")
    return p


def _add_options(p: argparse.ArgumentParser, modules: list[ModuleType], named: bool) -> None:
    """The analyses' CLI options, each once (analyses may share one). `named`: the help says
    which analyses an option sets ("cka: ..." for one, "... (cka, similarity)" for several)."""
    users: dict[str, list[ModuleType]] = {}
    for module in modules:
        for option in module.CLI:
            users.setdefault(option.flag, []).append(module)
    added: set[str] = set()
    for module in modules:
        for option in module.CLI:
            if option.flag in added:
                continue
            added.add(option.flag)
            names = [m.NAME for m in users[option.flag]]
            help_text = option.help
            if named and len(names) == 1:
                help_text = f"{names[0]}: {option.help}"
            elif named:
                help_text = f"{option.help} ({', '.join(names)})"
            kwargs = {"type": option.type, "metavar": option.metavar, "choices": option.choices}
            kwargs = {k: v for k, v in kwargs.items() if v is not None}
            p.add_argument(option.flag, dest=option.dest, help=help_text, **kwargs)


def _sweep_parser(sub) -> None:
    s = sub.add_parser("sweep", help="many trials of one study on Optuna (methods × space × seeds)")
    s.add_argument("config", help="a run config with a sweep: section")
    s.add_argument("overrides", nargs="*", help="dotted overrides, sweep.* ones too")
    s.add_argument("--out", help="the sweep directory (same as output.dir=...)")
    s.add_argument(
        "--workers", type=int, help="trial processes on this machine (default 1; ray: trials "
        "at once, default as many as fit)"
    )  # fmt: skip
    s.add_argument("--backend", choices=("processes", "ray"), default="processes",
                   help="who runs the trials: worker processes, or Ray tasks (pip install "
                   "forgetlab[ray]; sweep.resources per trial)")  # fmt: skip
    s.add_argument(
        "--ray-address",
        dest="ray_address",
        help="--backend ray: a running Ray cluster (default: a local Ray)",
    )
    s.add_argument("--storage", help="study storage URL shared by machines (default: SQLite file)")
    s.add_argument("--store", help="results store (default: the --storage URL, or output.store)")
    s.add_argument("--resume", action="store_true", help="continue the study: missing trials run")
    s.add_argument("--quiet", action="store_true", help="no per-trial lines")
    s.add_argument("--dry-run", action="store_true", help="list the points (grid), run nothing")


def _predict_lr_parser(sub) -> None:
    from forgetlab.analyses.spec import LR_DEFINITIONS as DEFINITIONS

    p = sub.add_parser(
        "predict-lr",
        help="a learning rate per method from the loss Hessian at init (lr_ref · λ_ref / λ_m)",
    )
    p.add_argument("config", help="a run config (a sweep config: its methods by default)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.max_length=64")
    p.add_argument("--methods", help="comma-separated methods (default: the sweep's methods)")
    p.add_argument("--reference", required=True, help="METHOD=RATE, e.g. lora=1e-3")
    p.add_argument(
        "--definition",
        dest="definitions",
        help=f"comma-separated, of {', '.join(DEFINITIONS)} (default: all)",
    )
    p.add_argument("--module", help="regex: which adapted module 'module' takes (first match)")
    p.add_argument("--warmup-steps", type=int, dest="warmup_steps", help="default 5")
    p.add_argument("--examples", type=int, help="training examples in the loss (default 32)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--iters", type=int, help="Lanczos iterations (default 10)")
    p.add_argument("--runs", nargs="+", help="finished runs of a grid (a sweep dir): swept best")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu | cuda (default: the config's training.device)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _cmd_predict_lr(args: argparse.Namespace) -> int:
    from forgetlab import api
    from forgetlab.analyses.predict_lr import format_text

    _quiet_libraries()
    _log_to_stderr(args.quiet)
    methods = [m.strip() for m in (args.methods or "").split(",") if m.strip()]
    keys = ("definitions", "module", "warmup_steps", "examples", "batch_size", "iters")
    options = {k: getattr(args, k) for k in keys}
    result = api.predict_lr(
        args.config,
        methods or None,
        args.reference,
        args.overrides,
        runs=args.runs,
        seed=args.seed,
        device=args.device,
        **{k: v for k, v in options.items() if v is not None},
    )
    print(json.dumps(result, indent=2) if args.json else "\n".join(format_text(result)))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from forgetlab import api

    overrides = [*args.overrides, "training.progress_bar=false"]
    if args.out:
        overrides.append(f"output.dir={args.out}")
    if args.dry_run:
        from forgetlab.sweeps.trial import load_sweep_config

        spec = load_sweep_config(args.config, overrides).spec  # every point checked
        for point in spec.grid() if spec.is_grid else []:
            print(f"{point.name}  {' '.join(point.overrides)}")
        for arm in spec.arm_names if not spec.is_grid else []:
            print(f"{arm}: " + ", ".join(a.describe() for a in spec.arm_space(arm).values()))
        if spec.sampler == "predicted" and not spec.predict_lr.rates:
            print(f"predicted: each arm runs {2 * spec.predict_lr.around + 1} of these rates, "
                  "those nearest its prediction (computed when the sweep starts)")  # fmt: skip
        seeds = "the config's seeds" if spec.seeds is None else f"seeds {spec.seeds}"
        size = f"{len(spec.grid())} points" if spec.is_grid else f"{spec.trials} trials"
        print(f"{size} ({spec.sampler}), each with {seeds}")
        return 0
    _quiet_libraries()
    _log_to_stderr(args.quiet)
    result = api.sweep(
        args.config,
        overrides,
        workers=args.workers,
        storage=args.storage,
        store=args.store,
        resume=args.resume,
        quiet=args.quiet,
        backend=args.backend,
        ray_address=args.ray_address,
    )
    print(result.format())
    if result.answers is not None:
        from forgetlab.answers import format_shown

        print("\n" + format_shown(result.answers))
    from forgetlab.sweeps.predicted import prediction_text

    prediction = prediction_text(result.sweep_dir)  # sweep.predict_lr
    if prediction:
        print("\n" + prediction)
    print(f"\nsweep directory: {result.sweep_dir}  (forgetlab compare {result.sweep_dir})")
    if result.missing:
        print(
            f"forgetlab: error: {result.missing} trial(s) did not complete (see the errors "
            "above); --resume runs them",
            file=sys.stderr,
        )
        return 1
    return 0


def _trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        dest="trust_remote_code",
        help="allow a run whose config.yaml sets model.trust_remote_code (runs code from the "
        "model's repository); never implied by reading a run",
    )


def _analysis_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, help="which seed's model (default: the first)")
    p.add_argument("--force", action="store_true", help="recompute even if cached")
    p.add_argument("--store", help="results store (default: the run's output.store)")
    p.add_argument("--device", help="cpu | cuda (default: the run's training.device)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    _trust_flag(p)


def _log_to_stderr(quiet: bool) -> None:
    if quiet:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("forgetlab")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _quiet_libraries() -> None:
    """Weight-loading bars and deprecation chatter from transformers hide our own output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def _launch_processes(args: argparse.Namespace) -> int:
    """`run --processes N`: the same command, minus --processes, as N workers of torchrun
    (what `accelerate launch` starts too); its exit code."""
    import subprocess

    if args.processes < 1:
        raise ForgetlabError(f"--processes {args.processes}: must be 1 or more")
    argv = ["--debug"] if args.debug else []
    argv += ["run", args.config, *args.overrides]
    argv += ["--out", args.out] if args.out else []
    argv += ["--quiet"] if args.quiet else []
    argv += ["--resume"] if args.resume else []
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc_per_node", str(args.processes), "-m", "forgetlab"]
    return subprocess.run([*launcher, *argv]).returncode


def _cmd_run(args: argparse.Namespace) -> int:
    from forgetlab import api
    from forgetlab.recipe.data_parallel import end_process_group, process_rank

    if args.processes is not None and args.processes != 1:
        return _launch_processes(args)
    if process_rank() > 0:  # a data-parallel worker: rank 0 speaks for the run
        args.quiet = True
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output.dir={args.out}")
    if args.quiet:
        overrides.append("training.progress_bar=false")
    config = api.load_config(args.config, overrides)
    _quiet_libraries()
    _log_to_stderr(args.quiet)  # the run log file gets DEBUG (per-step) lines
    if args.stack or args.stack_seeds:
        by_seed = not args.stack_seeds
        return _print_stacked(api.run_stacked([config], resume=args.resume, by_seed=by_seed))
    results = api.run_all(config, resume=args.resume)
    end_process_group()  # launched: every rank done, before the interpreter's exit
    if process_rank() > 0:
        return 0
    for result in results:
        print(api.format_run(result.metrics))
        print(f"\nrun directory: {result.run_dir}\n")
    if len(results) > 1:
        print(api.compare([r.run_dir for r in results]))
    return 0


def _print_stacked(outcomes: list) -> int:
    """The stacked runs' summaries; a run that diverged is named with its error (exit 1)."""
    from forgetlab import api

    done = [o.result for o in outcomes if o.result is not None]
    for outcome in outcomes:
        if outcome.result is not None:
            print(api.format_run(outcome.result.metrics))
            print(f"\nrun directory: {outcome.result.run_dir}\n")
        else:
            print(f"forgetlab: {outcome.config.output.dir}: {outcome.error}", file=sys.stderr)
    if len(done) > 1:
        print(api.compare([r.run_dir for r in done]))
    return 0 if len(done) == len(outcomes) else 1


def _cmd_compare(args: argparse.Namespace) -> int:
    from forgetlab import api

    if not args.run_dirs and not args.store:
        raise ForgetlabError("compare needs run directories or --store PATH")
    print(
        api.compare(
            args.run_dirs,
            store=args.store,
            fmt=args.format,
            learning=args.learning,
            forgetting=args.forgetting,
        )
    )
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from forgetlab.metrics import metrics_from_csv

    print(json.dumps(metrics_from_csv(Path(args.csv), alpha=args.alpha), indent=2))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from forgetlab import api
    from forgetlab.catalog import resolved_yaml
    from forgetlab.config import load_raw

    if "sweep" in load_raw(args.config):  # a sweep config: every point checked
        from forgetlab.sweeps.trial import load_sweep_config

        sweep = load_sweep_config(args.config, args.overrides)
        print(resolved_yaml(sweep.base), end="")
        points = sweep.spec.grid()
        print(f"# sweep: {len(points)} points, each valid (forgetlab sweep --dry-run lists them)")
        return 0
    print(resolved_yaml(api.load_config(args.config, args.overrides)), end="")
    return 0


def _default_analyses(run_dir: str, trust_remote_code: bool = False) -> list[str]:
    """What `analyze` runs without a flag: every analysis that applies to the run; those that
    need a language model (LM_ONLY: generation diversity) only to a causal LM's run."""
    from forgetlab.analyses import ANALYSES
    from forgetlab.analyses.runs import check_run_dir, load_run_config
    from forgetlab.models import model_type

    check_run_dir(Path(run_dir))  # the errors `analyze` itself would raise first
    causal = model_type(load_run_config(Path(run_dir), trust_remote_code).model) == "causal"
    return [n for n, m in ANALYSES.items() if causal or not getattr(m, "LM_ONLY", False)]


def _options(args: argparse.Namespace, module: ModuleType) -> dict:
    """The analysis options given on the command line (the others keep their defaults)."""
    given = {o.key: getattr(args, o.dest) for o in module.CLI}
    return {k: v for k, v in given.items() if v is not None}


def _cmd_analyze(args: argparse.Namespace) -> int:
    from forgetlab import api
    from forgetlab.analyses import ANALYSES, format_analysis

    flags = [name for name in ANALYSES if getattr(args, name)]
    _quiet_libraries()
    _log_to_stderr(args.quiet)
    for run_dir in args.run_dirs:  # every run is checked by `analyze` before it computes
        chosen = flags or _default_analyses(run_dir, args.trust_remote_code)
        options = {k: _options(args, ANALYSES[k]) for k in chosen}
        results = api.analyze(
            run_dir,
            chosen,
            seed=args.seed,
            force=args.force,
            store=args.store,
            device=args.device,
            options={k: v for k, v in options.items() if v},
            trust_remote_code=args.trust_remote_code,
        )
        print(f"== {run_dir}")
        for result in results.values():
            print(format_analysis(result), end="\n\n")
        print(f"(saved in {Path(run_dir) / 'analyses'})")
    return 0


def _cmd_hessian(args: argparse.Namespace) -> int:
    from forgetlab import api
    from forgetlab.analyses import HESSIAN, format_analysis

    options = _options(args, HESSIAN)
    _quiet_libraries()
    _log_to_stderr(args.quiet)
    result = api.hessian(
        args.target,
        args.overrides,
        seed=args.seed,
        force=args.force,
        store=args.store,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        **options,
    )
    print(json.dumps(result, indent=2) if args.json else format_analysis(result))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from forgetlab import api

    _quiet_libraries()
    tasks = [t.strip() for t in args.lm_eval.split(",") if t.strip()]
    results = api.lm_eval(
        args.target,
        tasks,
        stage=args.stage,
        seed=args.seed,
        limit=args.limit,
        batch_size=args.batch_size,
        include_path=args.include_path,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
    )
    print(f"{'task':<36}{'acc':>8}{'acc_norm':>10}{'n':>6}")
    for name, r in results.items():
        norm = r.get("acc_norm")
        print(
            f"{name:<36}{r['acc']:>8.3f}{'' if norm is None else format(norm, '.3f'):>10}"
            f"{r['n']:>6}"
        )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from forgetlab import api

    out = api.report(args.run_dirs, args.out, title=args.title)
    print(f"report written to {out}")
    if args.screenshot:
        from forgetlab.report.screenshot import screenshot

        png = screenshot(out, Path(args.screenshot), max_height=args.screenshot_height)
        print(f"screenshot: {png}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from forgetlab.catalog import format_plugins

    print(format_plugins(), end="")
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    from forgetlab import api
    from forgetlab.catalog import format_tasks, task_rows

    config = api.load_config(args.config, args.overrides) if args.config else None
    print(format_tasks(task_rows(config)), end="")
    print(
        "\ntrain/eval: the full splits (text kinds: documents), before data.max_*_examples.\n"
        "floor: what learning nothing scores on the whole eval split (the majority class, or\n"
        "guessing for multiple choice); '-': the learned test compares with the base model."
    )
    if config is None:
        print("own data: a task with type: file, train/eval paths and column names")
    return 0


COMMANDS = {
    "run": _cmd_run,
    "compare": _cmd_compare,
    "sweep": _cmd_sweep,
    "metrics": _cmd_metrics,
    "validate": _cmd_validate,
    "analyze": _cmd_analyze,
    "hessian": _cmd_hessian,
    "predict-lr": _cmd_predict_lr,
    "report": _cmd_report,
    "eval": _cmd_eval,
    "methods": _cmd_methods,
    "tasks": _cmd_tasks,
}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Overrides may come after options (`run cfg --out x training.lr=1e-3`): argparse stops
    # filling a positional list at the first option, so collect the leftovers here.
    args, rest = parser.parse_known_args(argv)
    strays = [r for r in rest if r.startswith("-") or "=" not in r]
    if strays or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(strays or rest)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    logger = logging.getLogger("forgetlab")
    handlers = list(logger.handlers)
    try:
        if args.command in ("run", "validate", "sweep"):  # import only warned about a typo
            check_setting()
            check_malloc_setting()
        return COMMANDS[args.command](args)
    except ForgetlabError as e:
        if args.debug:
            raise
        print(f"forgetlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("forgetlab: interrupted; finished stages are kept (use --resume)", file=sys.stderr)
        return 130
    finally:  # progress lines went to this command's stderr; a later caller has its own
        for handler in set(logger.handlers) - set(handlers):
            logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
