"""Options for one training step that issue 14 asked to measure before adopting: does any pay?

One MiniLM (packaged) training step — forward, backward, fused AdamW — at batch 16 under bf16
autocast, each option against the same step without it, in one run:

- `bf16-frozen`: LoRA's frozen base weights stored in bf16 (autocast otherwise casts each
  fp32 weight to bf16 on every forward). Same numbers: autocast rounds to the same bf16.
- `regional-compile`: `torch.compile(dynamic=True)` of each repeated transformer block, the
  compile time amortised over the run ("first step" includes it).
- `bf16-master` (full FT): the model's weights in bf16, without autocast, and fp32 master
  copies that the optimizer updates (each step: bf16 gradients cast to the masters', the
  masters copied back into the weights). Not the same numbers: LayerNorm, softmax and the
  embeddings then run in bf16 too, which autocast keeps in fp32.

Steps cycle through SST-2-like lengths (12-36 tokens, as length-grouped batches give); the
median of the steps after the first 16 is reported, and the ratio option / plain in steps/s.
None is used by forgetlab: none paid here (docs/benchmarks.md, benchmarks/README.md).

    python benchmarks/step_options.py [--steps 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import peft
import torch
import transformers
from common import machine, quiet

from forgetlab.models.loading import resolve_model_path

LENGTHS = [12, 20, 28, 16, 24, 36, 14, 30]
BATCH = 16
WARM = 16  # steps left out of the median: compile, allocator and cache warm-up


def build(method: str, option: str):
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("packaged:minilm"), num_labels=2, attn_implementation="eager"
    )
    if method == "lora":
        config = peft.LoraConfig(
            task_type=peft.TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=["query", "value"]
        )
        model = peft.get_peft_model(model, config)
    if option == "bf16-frozen":
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
                module.weight.data = module.weight.data.to(torch.bfloat16)
                if module.bias is not None:
                    module.bias.data = module.bias.data.to(torch.bfloat16)
    if option == "bf16-master":
        model.to(torch.bfloat16)
    if option == "regional-compile":
        encoder = (model.base_model.model if method == "lora" else model).bert.encoder
        for layer in encoder.layer:
            layer.compile(dynamic=True)
    return model


def steps(method: str, option: str, n: int) -> tuple[float, float]:
    """(seconds to the end of the first step from before building, median step seconds)."""
    start = time.perf_counter()
    model = build(method, option).train()
    params = [p for p in model.parameters() if p.requires_grad]
    master = option == "bf16-master"
    # bf16-master: the optimizer's parameters are fp32 copies of the bf16 weights
    masters = [q.detach().float() for q in params] if master else params
    opt = torch.optim.AdamW(masters, lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    times, first = [], 0.0
    for i in range(n):
        length = LENGTHS[i % len(LENGTHS)]
        ids = torch.randint(1000, 20000, (BATCH, length), generator=g)
        labels = torch.randint(0, 2, (BATCH,), generator=g)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not master):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        out.loss.backward()
        if master:
            for q, w in zip(masters, params):
                q.grad, w.grad = w.grad.float(), None
        opt.step()
        opt.zero_grad(set_to_none=True)
        if master:
            with torch.no_grad():
                torch._foreach_copy_(params, masters)
        times.append(time.perf_counter() - t)
        if i == 0:
            first = time.perf_counter() - start
    return first, statistics.median(times[WARM:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each side")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    print(machine())
    cases = [("lora", "bf16-frozen"), ("lora", "regional-compile"), ("full", "regional-compile"),
             ("full", "bf16-master")]  # fmt: skip
    print(f"{'method':6s} {'option':17s} {'plain ms':>9s} {'option ms':>10s} {'ratio':>6s} "
          f"{'cold 1st step s (plain/option)':>31s}")  # fmt: skip
    for method, option in cases:
        runs: dict[str, list[tuple[float, float]]] = {"plain": [], option: []}
        for _ in range(args.repeats):  # alternating: drift on a shared machine hits both
            for side in runs:
                runs[side].append(steps(method, side, args.steps))
        # the first step of each side's first run: later builds in this process reuse what
        # torch.compile cached, so only the first shows the compile a run pays once
        plain_first, opt_first = runs["plain"][0][0], runs[option][0][0]
        plain = statistics.median(r[1] for r in runs["plain"])
        opt = statistics.median(r[1] for r in runs[option])
        print(
            f"{method:6s} {option:17s} {plain * 1e3:9.1f} {opt * 1e3:10.1f} {plain / opt:5.2f}x "
            f"{plain_first:17.1f} / {opt_first:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
