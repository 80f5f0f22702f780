"""A lead, not adopted yet: dropout masks cut from 16-bit slices of torch's 64-bit draws.

torch's CPU `bernoulli_` draws one number from its generator (mt19937) for every element; on
a 2-core Intel Xeon (AMX) it took ~2 ms for a 16 x 24 x 384 activation, and `torch.profiler`
put it at 27 % of a MiniLM LoRA step's CPU time. `bits_dropout` keeps torch's generator (so
`torch.manual_seed` governs it) but makes each 64-bit draw serve four elements: an element
is kept where its 16-bit slice is >= round(p * 65536) - 32768 (p quantized to 1 / 65536),
and kept values are scaled by 1 / (1 - p) as torch does. Other masks, so other trained
numbers: the same amount of work, not the same run.

One MiniLM step (batch 16, bf16 autocast, fused AdamW, clip 1.0), plain against the same step
with `torch.nn.functional.dropout` swapped for `bits_dropout` (which every `nn.Dropout`, PEFT's
`lora_dropout` and HF's eager attention call), steps cycling through SST-2-like lengths;
alternating rounds, medians of the per-round step times, ratio plain / bits.

    python benchmarks/dropout_bits.py [--method lora|full|both] [--rounds 3] [--steps 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import peft
import torch
import torch.nn.functional as F
import transformers
from common import machine, quiet

from forgetlab.models.loading import resolve_model_path

LENGTHS = [12, 20, 28, 16, 24, 36, 14, 30]
BATCH = 16
TORCH_DROPOUT = F.dropout


def bits_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False):
    if not training or p == 0.0 or x.device.type != "cpu":
        return TORCH_DROPOUT(x, p, training, inplace)
    n = x.numel()
    draws = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    keep = draws.view(torch.int16)[:n].view(x.shape) >= round(p * 65536) - 32768
    mask = keep.to(x.dtype).mul_(1.0 / (1.0 - p))
    return x.mul_(mask) if inplace else x * mask


def build(method: str):
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("packaged:minilm"), num_labels=2, attn_implementation="eager"
    )
    if method == "lora":
        config = peft.LoraConfig(
            task_type=peft.TaskType.SEQ_CLS,
            r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=["query", "value"],
        )
        model = peft.get_peft_model(model, config)
    return model.train()


def step_time(model, optimizer, i: int) -> float:
    ids = torch.randint(1000, 20000, (BATCH, LENGTHS[i % len(LENGTHS)]))
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids[:, 0] % 2)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def bench(method: str, rounds: int, steps: int) -> None:
    model = build(method)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    times: dict[str, list[float]] = {"torch": [], "bits": []}
    for i in range(steps):  # warm-up, untimed
        step_time(model, optimizer, i)
    for _ in range(rounds):
        for side in ("torch", "bits"):
            F.dropout = bits_dropout if side == "bits" else TORCH_DROPOUT
            try:
                per = [step_time(model, optimizer, i) for i in range(steps)]
            finally:
                F.dropout = TORCH_DROPOUT
            times[side].append(statistics.median(per))
    plain, bits = (statistics.median(times[s]) * 1e3 for s in ("torch", "bits"))
    rounds_txt = ", ".join(f"{a * 1e3:.0f}/{b * 1e3:.0f}" for a, b in zip(*times.values()))
    print(
        f"{method}: step torch {plain:.1f} ms, bits {bits:.1f} ms, torch / bits "
        f"{plain / bits:.2f}x (rounds torch/bits ms: {rounds_txt})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["lora", "full", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    quiet()
    print(machine())
    for method in ["lora", "full"] if args.method == "both" else [args.method]:
        bench(method, args.rounds, args.steps)


if __name__ == "__main__":
    main()
