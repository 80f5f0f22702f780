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

from forgetlab.errors import ForgetlabError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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

    c = sub.add_parser("compare", help="side-by-side table of finished runs")
    c.add_argument("run_dirs", nargs="*", help="run directories")
    c.add_argument("--store", help="also list every run recorded in this SQLite store")

    m = sub.add_parser("metrics", help="continual-learning metrics of an accuracy matrix CSV")
    m.add_argument("csv", help="CSV: header stage,<task...>; rows base, stage1..stageT")
    m.add_argument("--alpha", type=float, default=0.05, help="level of the learned test")

    v = sub.add_parser("validate", help="check a config without running it")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*")

    sub.add_parser("methods", help="list the adaptation methods")
    sub.add_parser("tasks", help="list the registered tasks")
    return p


def _quiet_libraries() -> None:
    """Weight-loading bars and deprecation chatter from transformers hide our own output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def _cmd_run(args: argparse.Namespace) -> int:
    from forgetlab import api

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output.dir={args.out}")
    if args.quiet:
        overrides.append("training.progress_bar=false")
    config = api.load_config(args.config, overrides)
    _quiet_libraries()
    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.INFO)  # the run log file gets DEBUG (per-step) lines
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("forgetlab").addHandler(handler)
    results = api.run_all(config, resume=args.resume)
    for result in results:
        print(api.format_run(result.metrics))
        print(f"\nrun directory: {result.run_dir}\n")
    if len(results) > 1:
        print(api.compare([r.run_dir for r in results]))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from forgetlab import api

    if not args.run_dirs and not args.store:
        raise ForgetlabError("compare needs run directories or --store PATH")
    print(api.compare(args.run_dirs, store=args.store))
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from forgetlab.metrics import metrics_from_csv

    print(json.dumps(metrics_from_csv(Path(args.csv), alpha=args.alpha), indent=2))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from forgetlab import api
    from forgetlab.config import config_to_yaml

    print(config_to_yaml(api.load_config(args.config, args.overrides)), end="")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from forgetlab import api

    for name, summary in api.list_methods().items():
        print(f"{name:<10} {summary}")
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    from forgetlab.tasks.registry import TASK_REGISTRY

    for name in TASK_REGISTRY:
        print(name)
    print("(own data: a task with type: file, train/eval paths and column names)")
    return 0


COMMANDS = {
    "run": _cmd_run,
    "compare": _cmd_compare,
    "metrics": _cmd_metrics,
    "validate": _cmd_validate,
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
    try:
        return COMMANDS[args.command](args)
    except ForgetlabError as e:
        if args.debug:
            raise
        print(f"forgetlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("forgetlab: interrupted; finished stages are kept (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
