"""Dropout masks from numpy's PCG64 against torch's, in the same training loop (tried, not
adopted: the whole step did not get reliably faster).

torch's CPU generator (mt19937) makes one number at a time: a `bernoulli_` over a 16 x 20 x
384 activation took 0.63-0.95 ms on a 2-core EPYC, and cProfile put dropout at 23 % of a
MiniLM LoRA step. `PCG64Dropout` below keeps the rule (keep where a float32 uniform >= p,
scale by 1 / (1 - p)) with the uniforms from PCG64, seeded per call by one draw from torch's
generator (so torch.manual_seed governs it): 0.38-0.49 ms for that tensor. Here the same
model is built with torch's `nn.Dropout` modules and with them swapped for `PCG64Dropout`
(the backbone's, PEFT's lora_dropout, the heads'), one epoch of `train_stage` over N SST-2
examples (packaged MiniLM, batch 16, the throughput benchmark's LoRA and full-FT settings,
bf16 where native); runs alternate after an untimed warm-up of each; medians and min-max.
The two train different numbers (other masks), the same amount of work. Its tests are in
git history (commit 8b9c5dd, which had it as `training.dropout_rng: pcg64`).

    python benchmarks/dropout_rng.py [--examples 800] [--repeats 3] [--threads T]
                                     [--method lora|full|both]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import numpy as np
import torch
from common import machine, quiet, spread
from throughput import setup_for
from torch import nn

from forgetlab.methods import get_method, method_config
from forgetlab.models.device import native_bf16
from forgetlab.recipe.build import build_model
from forgetlab.recipe.train import make_accelerator, train_stage


class PCG64Dropout(nn.Dropout):
    """nn.Dropout whose mask comes from numpy's PCG64, seeded from torch's generator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        seed = int(torch.randint(0, 2**62, (1,)))
        uniform = np.random.Generator(np.random.PCG64(seed)).random(x.numel(), dtype=np.float32)
        keep = torch.from_numpy(uniform).view(x.shape) >= self.p
        return x * (keep.to(x.dtype) * (1.0 / (1.0 - self.p)))


def swap_dropout(model: nn.Module) -> int:
    """Every plain nn.Dropout of `model` replaced by a PCG64Dropout; how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, PCG64Dropout(child.p, child.inplace))
                swapped += 1
    return swapped


def one_epoch(setup, rng: str, seed: int) -> float:
    method = get_method(setup.method)
    mcfg = method_config(setup.config.method)
    model = build_model(setup.config, [setup.task], method, mcfg, seed)
    if rng == "pcg64":
        assert swap_dropout(model) > 0
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
            setup = setup_for(method, "sst2", args.examples, bf16, tmp)
            for rng in ("torch", "pcg64"):
                one_epoch(setup, rng, 0)  # warm-up
            seen: dict[str, list[float]] = {"torch": [], "pcg64": []}
            for rep in range(args.repeats):
                for rng in ("torch", "pcg64"):
                    seen[rng].append(one_epoch(setup, rng, rep + 1))
                    print(f"  {method} repeat {rep + 1} {rng:5s} {seen[rng][-1]:6.1f} ex/s",
                          flush=True)  # fmt: skip
            ratio = statistics.median(seen["pcg64"]) / statistics.median(seen["torch"])
            print(
                f"{method}: {len(setup.task.train)} examples, "
                f"{'bf16' if bf16 else 'fp32'}, threads {torch.get_num_threads()}: torch "
                f"{spread(seen['torch'])} ex/s, pcg64 {spread(seen['pcg64'])} ex/s, "
                f"pcg64 / torch {ratio:.2f}x"
            )


if __name__ == "__main__":
    main()
