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
- `kept-embedding-grad` (full FT): the word embedding's gradient added into a buffer kept
  across steps, only the rows looked up zeroed again, where the embedding's own backward
  writes a fresh dense 30,522 x 384 gradient of zeros every step (a `torch.profiler` table
  of a full-FT stage put that `fill_` at ~11 ms of a ~90 ms step). Same numbers.

Steps cycle through SST-2-like lengths (12-36 tokens, as length-grouped batches give); the
median of the steps after the first 16 is reported, and the ratio option / plain in steps/s.
None is used by forgetlab: none paid here (docs/benchmarks.md, benchmarks/README.md).

    python benchmarks/step_options.py [--steps 48] [--threads 2] [--only OPTION ...]
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
WARM = 16  # steps left out of the median: compile, allocator and cache warm-up


class _KeptLookup(torch.autograd.Function):
    """F.embedding whose backward adds into `table.kept` (made `.grad` when the optimizer let
    go of it, after zeroing only the rows the last step looked up)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, table: torch.nn.Embedding):
        ctx.save_for_backward(ids)
        ctx.table = table
        return F.embedding(ids, weight, table.padding_idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        table = ctx.table
        weight = table.weight
        if weight.grad is None:
            if table.touched:
                table.kept.index_fill_(0, torch.cat(table.touched), 0.0)
            table.touched = []
            weight.grad = table.kept
        flat = ids.reshape(-1)
        rows = grad.reshape(-1, weight.shape[1]).to(weight.dtype)
        if table.padding_idx is not None:  # as F.embedding: the pad row gets no gradient
            rows = rows.masked_fill((flat == table.padding_idx).unsqueeze(1), 0)
        weight.grad.index_add_(0, flat, rows)
        table.touched.append(flat)
        return None, None, None


def keep_embedding_grad(table: torch.nn.Embedding) -> None:
    table.kept, table.touched = torch.zeros_like(table.weight), []
    table.forward = lambda ids: _KeptLookup.apply(table.weight, ids, table)


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
    if option == "kept-embedding-grad":
        keep_embedding_grad(model.bert.embeddings.word_embeddings)
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
    p.add_argument("--only", nargs="+", help="these options only")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    print(machine())
    cases = [("lora", "bf16-frozen"), ("lora", "regional-compile"), ("full", "regional-compile"),
             ("full", "bf16-master"), ("full", "kept-embedding-grad")]  # fmt: skip
    cases = [c for c in cases if not args.only or c[1] in args.only]
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
