"""What every benchmark prints and does alike: the machine line and quiet libraries.

Imported by the scripts in this folder (run as `python benchmarks/<name>.py`, which puts this
folder on sys.path)."""

from __future__ import annotations

import logging
import os
import platform
import warnings

import accelerate
import peft
import torch
import transformers


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


def quiet() -> None:
    """Library chatter would interleave with the table; warnings do not change timings."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars
    logging.getLogger("forgetlab").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
