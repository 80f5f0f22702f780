"""glibc malloc policy: forgetlab's (`forgetlab.malloc`: no mmap, freed memory kept) against
glibc's defaults (FORGETLAB_MALLOC=default), for one trial's training.

Each run is a fresh process (the policy is per process) that trains K trials one after
another with `train_stage` (benchmarks/stacked.py's sequential side: the packaged MiniLM,
N SST-2 examples, 1 epoch, batch 16); the two policies alternate, after one warm-up each.
Prints each run, the medians, the ratio of medians, the per-pair ratios and peak RSS.

    python benchmarks/malloc_policy.py [--method full|lora|both] [--examples 400]
                                       [--trials 2] [--repeats 3] [--threads 2] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

STACKED = str(Path(__file__).with_name("stacked.py"))
POLICIES = {"glibc default": "default", "forgetlab": ""}


def one_run(method: str, policy: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, STACKED, "--child", "sequential", "--method", method,
           "--trials", str(args.trials), "--examples", str(args.examples),
           "--threads", str(args.threads), *(["--bf16"] if args.bf16 else [])]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "FORGETLAB_MALLOC": policy}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--method", choices=("full", "lora", "both"), default="both")
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from common import machine

    print(machine())
    precision = "bf16" if args.bf16 else "fp32"
    print(f"{args.trials} trials x {args.examples} sst2 examples one after another, "
          f"{precision}, {args.threads} threads, {args.repeats} repeats")  # fmt: skip
    for method in ["lora", "full"] if args.method == "both" else [args.method]:
        for policy in POLICIES.values():  # warm-up: page cache, the model files
            one_run(method, policy, args)
        runs: dict[str, list[dict]] = {name: [] for name in POLICIES}
        for rep in range(args.repeats):
            for name, policy in POLICIES.items():
                r = one_run(method, policy, args)
                runs[name].append(r)
                print(f"  {method} {name:14s} repeat {rep + 1}: {r['examples_per_s']:.1f} ex/s, "
                      f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)  # fmt: skip
        med = {n: statistics.median(r["examples_per_s"] for r in v) for n, v in runs.items()}
        pairs = [f["examples_per_s"] / d["examples_per_s"]
                 for d, f in zip(runs["glibc default"], runs["forgetlab"])]  # fmt: skip
        rss = {n: max(r["peak_rss_gib"] for r in v) for n, v in runs.items()}
        base, ours = med["glibc default"], med["forgetlab"]
        print(f"{method}: glibc default {base:.1f}, forgetlab {ours:.1f} "
              f"ex/s: {ours / base:.2f}x (medians); per pair "
              f"{', '.join(f'{x:.2f}' for x in pairs)}; peak RSS {rss['glibc default']:.2f} / "
              f"{rss['forgetlab']:.2f} GiB")  # fmt: skip


if __name__ == "__main__":
    main()
