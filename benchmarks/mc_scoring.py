"""Multiple-choice scoring speed: forgetlab's batched scorer vs lm-eval vs one forward per choice.

All three score the same BIG-bench questions with the same in-memory SmolLM2 (same dtype,
same torch threads); accuracy must be identical between forgetlab and lm-eval.

- **forgetlab**: `encode_mc` + `choice_loglikelihoods` (each context run once, the choices
  continue from its key/value cache; the timer includes tokenisation);
- **lm-eval**: `simple_evaluate` through `forgetlab.harness.lm_eval_tasks.run_lm_eval` on a local
  task holding the same questions, at each `--lm-eval-batch-sizes` value (a careful user's
  fixed batch size: on CPU `batch_size="auto"` always settles on `max_batch_size`, 64, after
  five trial forwards). Two times are reported: `scoring`, only inside HFLM.loglikelihood
  (tokenisation + forwards: the comparable figure), and `end-to-end`, the whole
  simple_evaluate (task building, dataset loading, environment info);
- **naive**: `naive_choice_loglikelihoods`, one unpadded forward of context + choice per choice.

Run (on 2 shared CPU cores, one thread: ~1.5 min at --examples 50, ~3 min at the default 100):

    python benchmarks/mc_scoring.py --threads 1
    python benchmarks/mc_scoring.py --examples 50 --naive-examples 10 --threads 1
    python benchmarks/mc_scoring.py --lm-eval-batch-sizes 8 32 auto --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Local tasks only: never wait on the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from forgetlab.harness.lm_eval_tasks import run_lm_eval, write_local_lm_eval_task  # noqa: E402
from forgetlab.kinds.multiple_choice import encode_mc, mc_metrics  # noqa: E402
from forgetlab.kinds.scorers.loglikelihood import (  # noqa: E402
    choice_loglikelihoods,
    naive_choice_loglikelihoods,
)
from forgetlab.models.loading import load_causal_lm  # noqa: E402
from forgetlab.tasks.bigbench import load_bigbench  # noqa: E402
from forgetlab.tasks.registry import default_data_dir  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["social_iqa", "date_understanding"])
    p.add_argument("--examples", type=int, default=100, help="questions per task (first N)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--batch-size", type=int, default=32, help="forgetlab: choice rows/forward")
    p.add_argument(
        "--lm-eval-batch-sizes", nargs="+", default=["32"], help="one run each, e.g. 8 32 auto"
    )
    p.add_argument(
        "--naive-examples", type=int, default=20, help="naive: first N questions per task (0: off)"
    )
    p.add_argument("--data-dir", type=Path, default=None)
    return p.parse_args(argv)


@dataclass
class Clock:
    """Wall and process-CPU seconds. With one torch thread, CPU seconds barely move when other
    jobs share the cores (wall seconds do): compare those on a busy machine."""

    wall: float = 0.0
    cpu: float = 0.0

    @contextmanager
    def running(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu


@dataclass
class Row:
    label: str
    metrics: dict  # task -> {"acc", "acc_norm", ...}
    clock: Clock
    choices: int
    note: str = ""
    batch: str = ""  # lm-eval's batch_size setting


@contextmanager
def timed_loglikelihood(clock: Clock) -> Iterator[None]:
    """Add the time spent inside HFLM.loglikelihood (lm-eval's tokenisation + scoring)."""
    from lm_eval.models.huggingface import HFLM

    original = HFLM.loglikelihood

    def wrapper(self, requests, disable_tqdm: bool = False):
        with clock.running():
            return original(self, requests, disable_tqdm=True)  # no progress-bar I/O timed

    HFLM.loglikelihood = wrapper
    try:
        yield
    finally:
        HFLM.loglikelihood = original


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data_dir or default_data_dir()
    model, tokenizer = load_causal_lm("packaged:smollm2", dtype=DTYPES[args.dtype])
    model.eval()
    window = model.config.max_position_embeddings
    tasks = {
        f"fl_{t}": load_bigbench(data, t, prompt="raw").eval[: args.examples] for t in args.tasks
    }
    n_choices = {t: sum(len(ex.choices) for ex in exs) for t, exs in tasks.items()}
    total_choices = sum(n_choices.values())
    print_setup(args, tasks, n_choices)

    # One untimed forward so that no side pays for first-call allocations.
    with torch.inference_mode():
        model(input_ids=torch.tensor([tokenizer("warm up the kernels")["input_ids"]]))

    # (a) forgetlab: tokenisation + batched scoring inside the timer
    ours = Row(f"forgetlab batched (batch {args.batch_size})", {}, Clock(), total_choices)
    ours_lls = {}
    for name, examples in tasks.items():
        with ours.clock.running():
            split = encode_mc(examples, tokenizer, window, target_delimiter=" ")
            ours_lls[name] = choice_loglikelihoods(model, split, args.batch_size, "cpu")
        ours.metrics[name] = mc_metrics(ours_lls[name], split)
    rows = [ours]

    # (b) lm-eval on a local task holding the same questions
    folder = Path(tempfile.mkdtemp(prefix="mc-bench-"))
    for name, examples in tasks.items():
        write_local_lm_eval_task(examples, folder, name)
    lm_eval_rows = []
    for bs in args.lm_eval_batch_sizes:  # JSONL + datasets cache: removed below
        row = Row(f"lm-eval HFLM (batch_size {bs})", {}, Clock(), total_choices, batch=bs)
        start = time.perf_counter()
        with timed_loglikelihood(row.clock):
            row.metrics = run_lm_eval(
                model,
                tokenizer,
                list(tasks),
                include_path=folder,
                batch_size=bs if bs.startswith("auto") else int(bs),
                log_samples=True,
            )
        row.note = f"end-to-end simple_evaluate {time.perf_counter() - start:.1f} s wall"
        lm_eval_rows.append(row)
    shutil.rmtree(folder, ignore_errors=True)
    rows += lm_eval_rows

    # (c) naive: one forward per choice, on the first --naive-examples questions
    naive_lls = {}
    if args.naive_examples > 0:
        n = min(args.naive_examples, args.examples)
        naive = Row("naive, one forward per choice", {}, Clock(), 0)
        for name, examples in tasks.items():
            split = encode_mc(examples[:n], tokenizer, window, target_delimiter=" ")
            with naive.clock.running():
                naive_lls[name] = naive_choice_loglikelihoods(model, split, "cpu")
            naive.metrics[name] = mc_metrics(naive_lls[name], split)
            naive.choices += sum(len(c) for c in split.continuation_ids)
        naive.note = f"first {n} questions per task" if n < args.examples else ""
        rows.append(naive)

    print_table(rows, tasks)
    best = min(lm_eval_rows, key=lambda r: r.clock.wall)
    print(
        f"\nforgetlab / lm-eval (best: batch_size {best.batch}, scoring only): "
        f"{best.clock.wall / ours.clock.wall:.2f}x wall, {best.clock.cpu / ours.clock.cpu:.2f}x CPU"
    )
    if naive_lls:
        naive_rate = rows[-1].choices / rows[-1].clock.wall
        print(f"forgetlab / naive: {total_choices / ours.clock.wall / naive_rate:.2f}x wall")
    return check_agreement(ours, ours_lls, lm_eval_rows, naive_lls, tasks)


def print_setup(args: argparse.Namespace, tasks: dict, n_choices: dict) -> None:
    import lm_eval
    import transformers

    print(
        f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load avg {os.getloadavg()[0]:.2f}; torch {torch.__version__} threads "
        f"{torch.get_num_threads()} (interop {torch.get_num_interop_threads()}); transformers "
        f"{transformers.__version__}, lm-eval {lm_eval.__version__}"
    )
    print(f"model: packaged:smollm2 (SmolLM2-135M-Instruct), {args.dtype}, eager attention, CPU")
    described = ", ".join(
        f"{t[3:]} {len(exs)} questions / {n_choices[t]} choices" for t, exs in tasks.items()
    )
    print(f"data: {described}; zero-shot, context = BIG-bench input, target_delimiter ' '")


def print_table(rows: list[Row], tasks: dict) -> None:
    print()
    head = "  ".join(f"{t[3:] + ' acc / acc_norm':>28}" for t in tasks)
    print(f"{'scorer':34} {head}  {'wall s':>7} {'CPU s':>7} {'choices/s':>9}")
    for r in rows:
        accs = "  ".join(
            f"{r.metrics[t]['acc']:>19.3f} / {r.metrics[t]['acc_norm']:<6.3f}" for t in tasks
        )
        rate = r.choices / r.clock.wall
        print(f"{r.label:34} {accs}  {r.clock.wall:7.2f} {r.clock.cpu:7.2f} {rate:9.1f}  {r.note}")


def check_agreement(ours: Row, ours_lls, lm_eval_rows: list[Row], naive_lls, tasks) -> int:
    mismatch = False
    for row in lm_eval_rows:
        for t in tasks:
            diff = max_abs_diff(ours_lls[t], row.metrics[t]["loglikelihoods"])
            same = all(row.metrics[t][k] == ours.metrics[t][k] for k in ("acc", "acc_norm"))
            mismatch |= not same
            print(
                f"forgetlab vs lm-eval batch_size {row.batch} on {t[3:]}: acc and acc_norm "
                f"{'identical' if same else 'DIFFERENT'}, max |delta loglikelihood| {diff:.1e}"
            )
    for t, lls in naive_lls.items():
        diff = max_abs_diff(ours_lls[t][: len(lls)], lls)
        print(f"forgetlab vs naive on {t[3:]}: max |delta loglikelihood| {diff:.1e}")
    if mismatch:
        print("\n" + "!" * 78 + "\n!!! ACCURACY DIFFERS BETWEEN FORGETLAB AND LM-EVAL\n" + "!" * 78)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
