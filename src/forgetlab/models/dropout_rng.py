"""`training.dropout_rng: pcg64`: the model's dropout masks drawn from numpy's PCG64 instead of
torch's CPU generator.

torch's CPU generator (mt19937) produces one number at a time: on a 2-core EPYC a
`bernoulli_` over a 16 x 20 x 384 activation took 0.63-0.90 ms, and dropout was 23 % of a
MiniLM LoRA step (benchmarks/README.md). The same rule - keep an element where a float32
uniform is >= p, scale the kept ones by 1 / (1 - p) - with the uniforms from PCG64 took 0.29
ms there. The masks follow the same distribution but another stream, so every trained
number differs from a `torch` run: an opt-in, recorded in the config.

Each call seeds its PCG64 with one draw from torch's default generator, so torch.manual_seed
(a stage's reseed, a data-parallel rank's own seed, --resume) governs these masks as it
governs torch's. Only `nn.Dropout` modules are swapped (the backbone's hidden and embedding
dropout, PEFT's lora_dropout, the heads'); dropout that a model calls as a function (BERT's
attention probabilities) stays torch's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

DROPOUT_RNGS = ("torch", "pcg64")


class PCG64Dropout(nn.Dropout):
    """nn.Dropout whose mask comes from numpy's PCG64, seeded from torch's generator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        seed = int(torch.randint(0, 2**62, (1,)))
        uniform = np.random.Generator(np.random.PCG64(seed)).random(x.numel(), dtype=np.float32)
        keep = torch.from_numpy(uniform).view(x.shape) >= self.p
        scale = keep.to(x.dtype) * (1.0 / (1.0 - self.p))
        if self.inplace:
            return x.mul_(scale)
        return x * scale


def use_dropout_rng(model: nn.Module, rng: str) -> int:
    """Swap every plain nn.Dropout in `model` for the `rng` kind; how many were swapped."""
    if rng == "torch":
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, PCG64Dropout(child.p, child.inplace))
                swapped += 1
    return swapped
