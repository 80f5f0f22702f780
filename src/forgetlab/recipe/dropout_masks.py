"""Where a training loop's CPU dropout masks come from: torch's own, or `bits`.

torch's CPU `bernoulli_` draws one number from its generator (mt19937) per element: on a
2-core Intel Xeon (AMX) ~16 ns an element, and `torch.profiler` put it at 27 % of a MiniLM
LoRA step (benchmarks/dropout_bits.py). `bits` keeps torch's generator, so `torch.manual_seed`
governs the masks as before (stage reseeds, resumes, data-parallel ranks), but makes each
64-bit draw serve four elements: an element is kept where its 16-bit slice is at least a
threshold, so the drop rate is p rounded to 1/65536, and kept values are scaled by the inverse
of that rate's complement (the expectation is the input's, as torch's). Other masks than
torch's: a run's numbers differ from a `torch` run's, the amount of work does not.

`training.dropout_masks: bits` swaps `torch.nn.functional.dropout` around each training
forward only (`dropout_masks`, in `train_stage` and the stacked loop): every `nn.Dropout` (the
backbone's, PEFT's `lora_dropout`, the heads') and HF's eager attention call it. Tensors off
the CPU keep torch's dropout (a GPU's masks are cheap), as do `p` of 0 or 1 and evaluation
(`training=False`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

TORCH_DROPOUT = F.dropout  # bound at import: what `bits` falls back to, and what is restored
SLICES = 65536  # values of a 16-bit slice of a draw
INT64 = (-(2**63), 2**63 - 1)  # randint's range: every bit of a draw uniform


def bits_dropout(
    input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
) -> torch.Tensor:
    """`torch.nn.functional.dropout` with masks from 16-bit slices of torch's 64-bit draws."""
    if not training or not 0.0 < p < 1.0 or input.device.type != "cpu":
        return TORCH_DROPOUT(input, p, training, inplace)  # torch checks p's range
    dropped = round(p * SLICES)  # of the 65536 slice values, how many drop the element
    if dropped in (0, SLICES):  # p too close to 0 or 1 for a 16-bit rate: torch's own
        return TORCH_DROPOUT(input, p, training, inplace)
    n = input.numel()
    draws = torch.randint(*INT64, ((n + 3) // 4,), dtype=torch.int64)
    keep = draws.view(torch.int16)[:n].view(input.shape) >= dropped - SLICES // 2
    scale = SLICES / (SLICES - dropped)  # 1 / (1 - rate): the kept values' expectation
    if inplace:
        return input.mul_(keep).mul_(scale)
    return input.mul(keep).mul_(scale)  # as torch's native dropout: input * mask * scale


@contextlib.contextmanager
def dropout_masks(kind: str) -> Iterator[None]:
    """Within the block, dropout masks of `kind` (training.dropout_masks): `torch` leaves
    torch's dropout as it is; `bits` swaps in `bits_dropout` and restores torch's after."""
    if kind == "torch":
        yield
        return
    if kind != "bits":
        raise ValueError(f"dropout masks {kind!r}: torch or bits")
    held = F.dropout
    F.dropout = bits_dropout
    try:
        yield
    finally:
        F.dropout = held
