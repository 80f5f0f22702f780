"""What every benchmark prints and does alike: the machine line and quiet libraries.

Imported by the scripts in this folder (run as `python benchmarks/<name>.py`, which puts this
folder on sys.path)."""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import accelerate
import peft
import torch
import transformers

Run = TypeVar("Run")


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine() -> str:
    """CPU model, load, threads and library versions: what a timing depends on."""
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"machine: {os.cpu_count()} CPUs ({model}), load avg {load_average():.2f}; "
        f"torch {torch.__version__} threads {torch.get_num_threads()} "
        f"(interop {torch.get_num_interop_threads()}); "
        f"transformers {transformers.__version__}, peft {peft.__version__}, "
        f"accelerate {accelerate.__version__}"
    )


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, in GiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed_sweep(raw: dict, config: Path, workers: int) -> tuple[float, int]:
    """`forgetlab sweep` of the sweep config `raw` (written to `config`) with --workers N, as
    a user starts it: (wall seconds from start to exit, trials COMPLETE)."""
    import yaml

    config.write_text(yaml.safe_dump(raw))
    # The user's environment, minus thread pins a shell may carry: each side sets its own.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, "-m", "forgetlab.cli", "sweep", str(config), "--workers",
           str(workers), "--quiet"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{config.name} (--workers {workers}) failed:\n{done.stderr[-2000:]}")
    trials = json.loads((Path(raw["output"]["dir"]) / "sweep.json").read_text())["trials"]
    return wall, sum(t["state"] == "COMPLETE" for t in trials)


def quiet() -> None:
    """Library chatter would interleave with the table; warnings do not change timings."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars
    logging.getLogger("forgetlab").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")


def interleave(
    ours: Callable[[int], Run],
    theirs: Callable[[int], Run],
    repeats: int,
    describe: Callable[[Run], str],
) -> tuple[list[Run], list[Run]]:
    """ours, trainer, ours, trainer, ...: drift on a shared machine hits both alike. Both
    sides of a pair see the same seed, so padding luck averages out; `describe` gives a
    run's time and rate for the progress line."""
    a, b = [], []
    for rep in range(repeats):
        seed = rep + 1
        for runs, fn, label in ((a, ours, "forgetlab"), (b, theirs, "trainer")):
            gc.collect()
            runs.append(fn(seed))
            print(
                f"  repeat {rep + 1}/{repeats} {label:9s} {describe(runs[-1])} "
                f"(load avg {load_average():.1f})",
                flush=True,
            )
    return a, b


def spread(values: list[float]) -> str:
    """median [min-max]"""
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"
