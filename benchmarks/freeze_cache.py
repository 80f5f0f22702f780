"""`freeze` with its frozen part cached (`method.cache_frozen: true`) against the same config
recomputing it (`cache_frozen: false`); both run the frozen layers in eval mode
(`frozen_dropout: false`), so the two train the same numbers.

One stage of `train_stage` over N SST-2 training examples for E epochs (packaged MiniLM, batch
16, bf16 autocast, length-grouped batches), then two evaluations of the SST-2 eval split (a
run scores every task after every stage: the second pass is what every later row costs).
Model building and tokenisation are untimed. Runs alternate (off, on, off, on, ...) after an
untimed warm-up of each; the table gives medians and min-max over the repeats. The first epoch
fills the cache (it costs what recomputing does), so the figures are split into the first
epoch and the later ones, beside the whole stage.

    python benchmarks/freeze_cache.py [--examples 480] [--epochs 3] [--layers 1]
                                      [--repeats 3] [--threads T]
"""

from __future__ import annotations

import argparse
import gc
import math
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch
from common import load_average, machine, quiet, spread
from trainer_comparison import make_setup, training_section

from forgetlab.kinds import EvalContext
from forgetlab.methods import get_method, method_config
from forgetlab.recipe.build import build_model
from forgetlab.recipe.evaluate import evaluate_task
from forgetlab.recipe.train import make_accelerator, train_stage

BATCH_SIZE = 16
EVAL_BATCH = 64


@dataclass
class Side:
    """One side's timings over the repeats."""

    stage: list[float] = field(default_factory=list)  # examples/s over the whole stage
    first: list[float] = field(default_factory=list)  # over the first epoch
    later: list[float] = field(default_factory=list)  # over the epochs after it
    evals: list[float] = field(default_factory=list)  # eval examples/s, second pass
    cache_mb: float = 0.0
    rss_mb: float = 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_run(setup, cache: bool, seed: int, side: Side | None) -> None:
    keys = {"frozen_dropout": False, "cache_frozen": cache}
    mcfg = method_config({**setup.config.method, **keys})
    model = build_model(setup.config, [setup.task], get_method("freeze"), mcfg, seed)
    accelerator = make_accelerator(setup.config.training)
    task, cfg = setup.task, setup.config.training
    per_epoch = math.ceil(len(task.train) / cfg.batch_size)
    marks: dict[int, float] = {}
    paused = [0.0]  # seconds inside the hook: train_stage leaves them out, so do we

    def mark(step: int, total: int) -> None:
        if step % per_epoch == 0:
            marks[step // per_epoch] = time.perf_counter() - paused[0]

    stats = train_stage(
        model, get_method("freeze"), mcfg, task.name, task.kind, task.train, cfg,
        accelerator, seed=seed, stage=1, pad_id=setup.pad_id, on_step=mark,
    )  # fmt: skip
    ctx = EvalContext(
        batch_size=EVAL_BATCH, accelerator=accelerator, pad_id=setup.pad_id,
        eval_cfg=setup.config.eval, extra_metrics=task.data.extra_metrics,
    )  # fmt: skip
    evaluate_task(model, task.name, task.kind, task.eval, ctx)  # fills the eval rows
    start = time.perf_counter()
    evaluate_task(model, task.name, task.kind, task.eval, ctx)
    eval_s = time.perf_counter() - start
    if side is None:
        return
    n, epochs = len(task.train), len(marks) - 1
    side.stage.append(stats.examples_per_s)
    side.first.append(n / (marks[1] - marks[0]))
    side.later.append(n * (epochs - 1) / (marks[epochs] - marks[1]))
    side.evals.append(len(task.eval) / eval_s)
    if cache:
        rows = model.backbone.forward.rows.values()
        side.cache_mb = sum(t.numel() * t.element_size() for t in rows) / 2**20
    side.rss_mb = peak_rss_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=480)
    parser.add_argument("--eval-examples", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=1, help="method.num_trainable_layers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first fills the cache)")
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="freeze-cache-") as tmp:
        raw = {
            "name": "freeze-cache",
            "tasks": ["sst2"],
            "model": {"name": "packaged:minilm", "max_length": 128},
            "data": {"max_train_examples": args.examples, "max_eval_examples": args.eval_examples},
            "method": {"name": "freeze", "num_trainable_layers": args.layers},
            "training": {
                **training_section(5e-5, BATCH_SIZE, 0.01, 1.0, "bf16"),
                "epochs": args.epochs,
            },
            "output": {"dir": tmp, "store": f"{tmp}/store.sqlite"},
        }
        setup = make_setup("freeze", raw)
        print(
            f"freeze, num_trainable_layers={args.layers}: {len(setup.task.train)} SST-2 "
            f"examples x {args.epochs} epochs, batch {BATCH_SIZE}, bf16; "
            f"{len(setup.task.eval)} eval examples, batch {EVAL_BATCH}"
        )
        sides = {False: Side(), True: Side()}
        for cache in (False, True):  # warm-up: allocator, kernels, the model cache
            one_run(setup, cache, 0, None)
        for rep in range(args.repeats):
            for cache in (False, True):
                gc.collect()
                one_run(setup, cache, rep + 1, sides[cache])
                s = sides[cache]
                print(
                    f"  repeat {rep + 1}/{args.repeats} cache {'on ' if cache else 'off'} "
                    f"stage {s.stage[-1]:.1f} ex/s, later epochs {s.later[-1]:.1f} ex/s, "
                    f"eval {s.evals[-1]:.0f} ex/s (load avg {load_average():.1f})",
                    flush=True,
                )
    off, on = sides[False], sides[True]
    print(f"\n{'examples/s':28s} {'recomputed':>18s} {'cached':>18s} {'ratio':>7s}")
    for label, a, b in (
        ("whole stage (training)", off.stage, on.stage),
        ("first epoch (fills cache)", off.first, on.first),
        ("later epochs", off.later, on.later),
        ("evaluation, second pass", off.evals, on.evals),
    ):
        ratio = statistics.median(b) / statistics.median(a)
        print(f"{label:28s} {spread(a):>18s} {spread(b):>18s} {ratio:6.2f}x")
    print(
        f"peak RSS: {off.rss_mb:.0f} MB after the recomputing runs, {on.rss_mb:.0f} MB after "
        f"the cached ones (cache: {on.cache_mb:.0f} MB for the training and eval rows)"
    )
    later = statistics.median(on.later) / statistics.median(off.later)
    print(f"goal: later epochs >= 3x recomputing: {later:.2f}x")


if __name__ == "__main__":
    main()
