"""A shared CPU: examples/s of 1, 2 and 3 forgetlab trainings running at once, with
forgetlab's thread settings (forgetlab.threads: a passive OpenMP wait policy when other
processes keep the CPU busy, torch's default otherwise) against the same runs with torch's
defaults (FORGETLAB_THREADS=torch: spin-waiting threads).

Each run is its own process (as two configs at once, sweep workers, or the test suite beside
a run are): it loads MiniLM and a task untimed, then trains `--steps` steps of batch 16, LoRA or
full, and prints its examples/s. The K processes of one setting start together; the table
gives each setting's per-process examples/s (median over processes and repeats) and its ratio
to the same setting alone.

    python benchmarks/shared_cpu.py [--method lora|full] [--steps 24] [--repeats 2]
                                    [--concurrent 1,2,3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = {"torch defaults": {"FORGETLAB_THREADS": "torch"}, "forgetlab": {}}


def worker(method: str, steps: int) -> None:
    """One training process: untimed setup, then `steps` timed steps; prints JSON."""
    # forgetlab first: importing it applies forgetlab.threads before torch loads
    # isort: off
    import forgetlab  # noqa: F401
    import torch

    # isort: on

    sys.path.insert(0, str(HERE))
    from common import quiet

    from forgetlab.methods import get_method, method_config
    from forgetlab.models import load_tokenizer
    from forgetlab.recipe.build import build_model
    from forgetlab.recipe.prepare import prepare_tasks
    from forgetlab.recipe.train import make_accelerator, train_stage
    from forgetlab.resolve import load_config

    quiet()
    lr = 5e-4 if method == "lora" else 2e-5
    config = load_config(
        raw={
            "tasks": ["sst2"],
            "data": {"max_train_examples": 16 * steps, "max_eval_examples": 16},
            "method": {"name": method},
            "training": {"lr": lr, "epochs": 1, "batch_size": 16, "progress_bar": False,
                         "mixed_precision": "bf16", "log_every": 1000},
        }
    )  # fmt: skip
    tokenizer = load_tokenizer(config.model)
    tasks = prepare_tasks(config, tokenizer)
    accelerator = make_accelerator(config.training)
    m, mcfg = get_method(method), method_config(config.method)
    model = build_model(config, tasks, m, mcfg, seed=1, pad_id=0, device=accelerator.device)
    t = tasks[0]
    args = (m, mcfg, t.name, t.kind, t.train, config.training, accelerator)
    stats = train_stage(model, *args, seed=1, stage=1, pad_id=0)
    out = {
        "examples_per_s": stats.examples_per_s,
        "threads": torch.get_num_threads(),
        "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(torch default)"),
    }
    print(json.dumps(out), flush=True)


def run_together(k: int, env_extra: dict, method: str, steps: int) -> list[dict]:
    env = {**os.environ, **env_extra}
    for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT"):
        env.pop(key, None)  # each setting decides these itself
    env.update(env_extra)
    cmd = [sys.executable, __file__, "--worker", "--method", method, "--steps", str(steps)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a worker failed (exit {p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="lora", choices=["lora", "full"])
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--concurrent", default="1,2,3")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.method, args.steps)
        return
    counts = [int(k) for k in args.concurrent.split(",")]
    print(
        f"machine: {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}; method "
        f"{args.method}, {args.steps} steps of batch 16 per process, {args.repeats} repeats"
    )
    rates: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.repeats):
        for k in counts:
            for name, env in SETTINGS.items():  # interleaved: drift hits both settings alike
                start = time.perf_counter()
                got = run_together(k, env, args.method, args.steps)
                rates.setdefault((name, k), []).extend(r["examples_per_s"] for r in got)
                print(f"  repeat {rep + 1} {name:15s} x{k}: "
                      + ", ".join(f"{r['examples_per_s']:.1f}" for r in got)
                      + f" ex/s per process ({got[0]['threads']} threads, "
                      f"{got[0]['wait_policy']}; {time.perf_counter() - start:.0f} s)",
                      flush=True)  # fmt: skip
    print(f"\n{'concurrent':>10} {'setting':>15} {'ex/s per process':>17} {'vs alone':>9} "
          f"{'forgetlab / torch':>18}")  # fmt: skip
    for k in counts:
        for name in SETTINGS:
            med = statistics.median(rates[(name, k)])
            alone = statistics.median(rates[(name, counts[0])])
            ratio = med / statistics.median(rates[("torch defaults", k)])
            print(f"{k:>10} {name:>15} {med:>17.1f} {med / alone:>9.2f} {ratio:>18.2f}")


if __name__ == "__main__":
    main()
