"""Trials per hour of `forgetlab sweep` with --workers 1 and --workers 2 on this machine, in
one run (the two alternate, so drift on a shared machine hits both alike).

Each side is the real command line on the same tiny grid (LoRA on SST-2, N learning rates,
one seed per trial), into its own fresh sweep directory: wall time from start to exit,
process start, model loads and the study included. --workers N starts N fresh processes
with cores / N threads each: one thread pinned and passive, more under the thread governor
(forgetlab.sweeps.workers.worker_env).

    python benchmarks/sweep_workers.py                 # 6 trials per sweep, 1 repeat
    python benchmarks/sweep_workers.py --points 8 --repeats 2 --examples 400
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import load_average, machine, timed_sweep


def sweep_config(out: Path, points: int, examples: int) -> dict:
    lrs = [round(1e-4 * 2**k, 8) for k in range(points)]
    return {
        "name": "bench",
        "tasks": ["sst2"],
        "model": {"name": "packaged:minilm", "max_length": 64, "pooling": "mean"},
        "data": {"max_train_examples": examples, "max_eval_examples": 200},
        "method": {"name": "lora"},
        "training": {"epochs": 1, "batch_size": 16, "mixed_precision": "bf16"},
        "output": {"dir": str(out), "store": str(out / "store.sqlite"), "checkpoints": "none"},
        "sweep": {"space": {"training.lr": lrs}, "seeds": [1], "objectives": ["learning"]},
    }


def one_sweep(workdir: Path, workers: int, rep: int, points: int, examples: int) -> dict:
    out = workdir / f"w{workers}-r{rep}"
    raw = sweep_config(out, points, examples)
    wall, complete = timed_sweep(raw, workdir / f"{out.name}.yaml", workers)
    return {"workers": workers, "wall_s": wall, "trials": complete,
            "trials_per_hour": complete / wall * 3600}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=6, help="trials per sweep")
    p.add_argument("--examples", type=int, default=200, help="SST-2 training examples per trial")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    print(machine())
    print(f"grid: {args.points} LoRA trials on {args.examples} SST-2 examples, 1 seed each")
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        for rep in range(args.repeats):
            for workers in (1, 2):
                r = one_sweep(Path(tmp), workers, rep, args.points, args.examples)
                runs[workers].append(r)
                print(
                    f"  repeat {rep + 1}/{args.repeats} --workers {workers}: "
                    f"{r['wall_s']:.1f} s, {r['trials_per_hour']:.0f} trials/h "
                    f"(load avg {load_average():.1f})",
                    flush=True,
                )
    rate = {w: statistics.median(r["trials_per_hour"] for r in rs) for w, rs in runs.items()}
    print(f"\n{'workers':>8}{'trials/h (median)':>20}{'wall s (median)':>18}")
    for w, rs in runs.items():
        print(f"{w:>8}{rate[w]:>20.0f}{statistics.median(r['wall_s'] for r in rs):>18.1f}")
    print(f"--workers 2 / --workers 1: {rate[2] / rate[1]:.2f}x trials per hour")


if __name__ == "__main__":
    main()
