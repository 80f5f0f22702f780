"""Stacked trials: K trials trained as one stacked model vs the same K trials one after another.

Both sides train the packaged MiniLM for one epoch over the same N examples of a shipped task
(batch 16, AdamW, linear schedule, grad-norm clip 1.0, length-grouped batches, fp32 unless
--bf16), K trials with K different learning rates and seeds: `train_stage` K times in a row
vs `train_stacked_stage` once over the K trials. Model building and tokenization are untimed;
only training is (evaluation is the same per trial either way). Each side runs in its own
fresh process, so that its peak RSS is its own. The table prints aggregate examples/s (K x N
over the time), the ratio, and peak RSS.

`--method adalora` runs AdaLoRA's whole schedule in the epoch (a fifth of the steps at full
rank, a fifth at the final ranks, a budget cut at every step between): the stack's rank
allocation, per trial after every step, is timed with it.

    python benchmarks/stacked.py [--trials 8] [--examples 160] [--model packaged:minilm]
                                 [--method full|lora|adalora|both]
                                 [--repeats 1] [--threads 2] [--bf16] [--same-seed]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

RATES = {"lora": 1e-3, "adalora": 1e-3, "full": 5e-5}


def method_keys(method: str, args: argparse.Namespace) -> dict:
    if method != "adalora":
        return {"name": method}
    steps = math.ceil(args.examples / 16)  # the stage's optimizer steps
    edge = max(1, steps // 5)
    return {"name": method, "total_step": steps, "tinit": edge, "tfinal": edge, "deltaT": 1}


def trial_config(method: str, k: int, args: argparse.Namespace):
    from forgetlab import load_config

    return load_config(
        raw={
            "tasks": [args.task],
            "model": {"name": args.model, "max_length": 128},
            "data": {"max_train_examples": args.examples, "max_eval_examples": 16},
            "method": method_keys(method, args),
            "seeds": [1 if args.same_seed else k + 1],
            "training": {
                "lr": RATES[method] * (1 + 0.25 * k),
                "epochs": 1,
                "batch_size": 16,
                "progress_bar": False,
                "mixed_precision": "bf16" if args.bf16 else "no",
            },
            "output": {"dir": f"/tmp/forgetlab-bench-stacked/{k}"},
        }
    )


def child(mode: str, method: str, args: argparse.Namespace) -> dict:
    """One side, in this process: build K trials, train them (timed), report."""
    import torch
    from common import quiet

    from forgetlab.methods import get_method, method_config
    from forgetlab.models import load_tokenizer
    from forgetlab.recipe.build import build_run_model
    from forgetlab.recipe.prepare import pad_token_id, prepare_run
    from forgetlab.recipe.stacked.layers import stack_models
    from forgetlab.recipe.stacked.train import Trial, train_stacked_stage
    from forgetlab.recipe.train import make_accelerator, train_stage

    quiet()
    torch.set_num_threads(args.threads)
    configs = [trial_config(method, k, args) for k in range(args.trials)]
    tokenizer = load_tokenizer(configs[0].model)
    pad_id = pad_token_id(tokenizer)
    run_tasks = prepare_run(configs[0], tokenizer)
    task = run_tasks.tasks[0]
    acc = make_accelerator(configs[0].training)
    m, mcfg = get_method(method), method_config(configs[0].method)
    models = [
        build_run_model(c, run_tasks, c.seeds[0], pad_id=pad_id, device=acc.device) for c in configs
    ]
    examples = len(task.train) * args.trials
    if mode == "sequential":
        start = time.perf_counter()
        for c, model in zip(configs, models):
            train_stage(model, m, mcfg, task.name, task.kind, task.train, c.training, acc,
                        seed=c.seeds[0], stage=1, pad_id=pad_id)  # fmt: skip
        wall = time.perf_counter() - start
    else:
        trials = [Trial(model, c.training, c.seeds[0]) for c, model in zip(configs, models)]
        stack = stack_models(models)
        start = time.perf_counter()
        out = train_stacked_stage(stack, trials, list(range(len(trials))), m, mcfg, task.name,
                                  task.kind, task.train, acc, 1, pad_id)  # fmt: skip
        wall = time.perf_counter() - start
        assert all(not isinstance(o, Exception) for o in out.values())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024  # GiB (Linux: KiB)
    gpu = torch.cuda.max_memory_allocated() / 2**30 if acc.device.type == "cuda" else None
    return {"wall_s": wall, "examples_per_s": examples / wall, "peak_rss_gib": rss,
            "device": acc.device.type, "peak_gpu_gib": gpu}  # fmt: skip


def parent(args: argparse.Namespace) -> None:
    from common import machine

    print(machine())
    precision = "bf16" if args.bf16 else "fp32"
    print(
        f"{args.trials} trials x {args.examples} {args.task} examples, 1 epoch, batch 16, "
        f"{precision}, {args.threads} threads, {args.repeats} repeat(s), "
        f"{'one seed' if args.same_seed else 'a seed per trial'}"
    )
    methods = ["lora", "full"] if args.method == "both" else [args.method]
    rows = []
    for method in methods:
        runs: dict[str, list[dict]] = {"sequential": [], "stacked": []}
        for rep in range(args.repeats):
            for mode in ("sequential", "stacked"):
                cmd = [sys.executable, __file__, "--child", mode, "--method", method,
                       "--trials", str(args.trials), "--examples", str(args.examples),
                       "--threads", str(args.threads), "--task", args.task,
                       "--model", args.model,
                       *(["--bf16"] if args.bf16 else []),
                       *(["--same-seed"] if args.same_seed else [])]  # fmt: skip
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if out.returncode != 0:
                    raise SystemExit(out.stderr[-3000:])
                result = json.loads(out.stdout.strip().splitlines()[-1])
                runs[mode].append(result)
                gpu = result.get("peak_gpu_gib")
                print(
                    f"  {method} {mode:10s} repeat {rep + 1}: {result['wall_s']:.1f} s, "
                    f"{result['examples_per_s']:.1f} ex/s, "
                    f"peak RSS {result['peak_rss_gib']:.2f} GiB"
                    + ("" if gpu is None else f", peak GPU memory {gpu:.2f} GiB"),
                    flush=True,
                )
        med = {k: statistics.median(r["examples_per_s"] for r in v) for k, v in runs.items()}
        rss = {k: max(r["peak_rss_gib"] for r in v) for k, v in runs.items()}
        on_gpu = runs["stacked"][0]["device"] == "cuda"
        goal = 10.0 if on_gpu else 2.0 if method == "full" else 3.0  # issue 14's goals
        ratio = med["stacked"] / med["sequential"]
        rows.append(
            f"| {method} | {med['sequential']:.1f} | {med['stacked']:.1f} | {ratio:.2f}x "
            f"(goal >= {goal:.0f}x: {'met' if ratio >= goal else 'missed'}) | "
            f"{rss['sequential']:.2f} / {rss['stacked']:.2f} |"
        )
    print(
        "\n| method | sequential ex/s | stacked ex/s | stacked / sequential "
        "| peak RSS GiB seq / stacked |"
    )
    print("|---|---|---|---|---|")
    print("\n".join(rows))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--examples", type=int, default=160, help="training examples per trial")
    p.add_argument("--method", choices=("full", "lora", "adalora", "both"), default="both")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--task", default="sst2")
    p.add_argument("--model", default="packaged:minilm", help="model.name of every trial")
    p.add_argument("--bf16", action="store_true")
    p.add_argument(
        "--same-seed",
        action="store_true",
        help="every trial seed 1 (only the rates differ): the same batch order, no extra padding",
    )
    p.add_argument("--child", choices=("sequential", "stacked"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.method, args)))
    else:
        parent(args)


if __name__ == "__main__":
    main()
