"""`training.dropout_rng`: torch's dropout masks against numpy's PCG64 ones, same loop.

One epoch of `train_stage` over N SST-2 examples (packaged MiniLM, batch 16, the throughput
benchmark's LoRA and full-FT settings, bf16 autocast where native), the same model built with
`dropout_rng: torch` and with `pcg64`; runs alternate (torch, pcg64, ...) after an untimed
warm-up of each; medians and min-max of the repeats. The two train different numbers (other
masks), the same amount of work.

    python benchmarks/dropout_rng.py [--examples 800] [--repeats 3] [--threads T]
                                     [--method lora|full|both]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from common import machine, quiet, spread
from throughput import setup_for

from forgetlab.methods import get_method, method_config
from forgetlab.models.device import native_bf16
from forgetlab.recipe.build import build_model
from forgetlab.recipe.train import make_accelerator, train_stage


def one_epoch(setup, seed: int) -> float:
    method = get_method(setup.method)
    mcfg = method_config(setup.config.method)
    model = build_model(setup.config, [setup.task], method, mcfg, seed)
    accelerator = make_accelerator(setup.config.training)
    stats = train_stage(
        model, method, mcfg, setup.task.name, setup.task.kind, setup.task.train,
        setup.config.training, accelerator, seed=seed, stage=1, pad_id=setup.pad_id,
    )  # fmt: skip
    return stats.examples_per_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=800)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--method", choices=("lora", "full", "both"), default="both")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    print(machine())
    bf16 = native_bf16(torch.device("cpu"))
    methods = ("lora", "full") if args.method == "both" else (args.method,)
    with tempfile.TemporaryDirectory(prefix="dropout-rng-") as tmp:
        for method in methods:
            setups = {r: setup_for(method, "sst2", args.examples, bf16, tmp, r)
                      for r in ("torch", "pcg64")}  # fmt: skip
            for setup in setups.values():
                one_epoch(setup, 0)  # warm-up
            seen: dict[str, list[float]] = {"torch": [], "pcg64": []}
            for rep in range(args.repeats):
                for rng, setup in setups.items():
                    seen[rng].append(one_epoch(setup, rep + 1))
                    print(f"  {method} repeat {rep + 1} {rng:5s} {seen[rng][-1]:6.1f} ex/s",
                          flush=True)  # fmt: skip
            ratio = statistics.median(seen["pcg64"]) / statistics.median(seen["torch"])
            print(
                f"{method}: {len(setups['torch'].task.train)} examples, "
                f"{'bf16' if bf16 else 'fp32'}, threads {torch.get_num_threads()}: torch "
                f"{spread(seen['torch'])} ex/s, pcg64 {spread(seen['pcg64'])} ex/s, "
                f"pcg64 / torch {ratio:.2f}x"
            )


if __name__ == "__main__":
    main()
