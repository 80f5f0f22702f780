"""Greedy generation speed: forgetlab's batched `generate` vs one prompt at a time.

SmolLM2-135M-Instruct (`packaged:smollm2`, eager attention, as forgetlab loads it) answers the
first K GSM8K test questions (the `gsm8k_gen` task's prompts, in its chat template), greedy, at
most M new tokens, KV cache on, on CPU. Two ways:

- **forgetlab**: `forgetlab.kinds.scorers.decoding.generate_with_stats` at batch B (prompts
  sorted by length, left-padded; a batch runs until its last row ends);
- **one at a time**: what a plain loop does: for each prompt, `apply_chat_template`, tokenize,
  `model.generate(..., do_sample=False, max_new_tokens=M)`, decode.

Both use the very same model object; the timer wraps the whole call (tokenization, generation,
decoding). New tokens are counted up to and including each answer's eos, on both sides. The
script asserts that the two give identical texts (greedy; fp32 weights) and exits non-zero
otherwise. `--bf16-weights` adds the same comparison with the weights cast to bfloat16, where
agreement is reported rather than asserted (bf16 rounding depends on the batch shape, so a
near-tie between two tokens can flip).

    python benchmarks/generation.py [--questions 16] [--max-new-tokens 96] [--batch-size 8]
                                    [--repeats 1] [--threads T] [--bf16-weights]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from common import load_average, machine, quiet

from forgetlab.config import ModelConfig
from forgetlab.kinds.scorers.decoding import encode_prompts, generate_with_stats
from forgetlab.models.loading import load_causal_backbone, load_tokenizer
from forgetlab.tasks.registry import load_task

MODEL = "packaged:smollm2"


@dataclass
class Run:
    texts: list[str]
    counts: list[int]  # new tokens per prompt, eos included
    seconds: float

    @property
    def new_tokens(self) -> int:
        return sum(self.counts)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds


# --------------------------------------------------------------------------------------
# the two ways


def run_forgetlab(model, tokenizer, prompts: list[str], max_new: int, batch: int) -> Run:
    start = time.perf_counter()
    gen = generate_with_stats(
        model, tokenizer, prompts, max_new_tokens=max_new, batch_size=batch, device="cpu"
    )
    seconds = time.perf_counter() - start
    # per-prompt counts are not returned; the total is, and it is checked against the loop's
    return Run([t[0] for t in gen.texts], [gen.new_tokens], seconds)


def run_one_at_a_time(model, tokenizer, prompts: list[str], max_new: int) -> Run:
    texts, counts = [], []
    start = time.perf_counter()
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        enc = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        out = model.generate(
            **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        new = out[0, enc["input_ids"].shape[1] :].tolist()  # ends at (and holds) eos
        texts.append(tokenizer.decode(new, skip_special_tokens=True))
        counts.append(len(new))
    return Run(texts, counts, time.perf_counter() - start)


def batch_slots(tokenizer, prompts: list[str], counts: list[int], batch: int) -> int:
    """Decode slots forgetlab's batches occupy (rows x the longest answer of their batch): a
    finished row keeps its slot until the batch's last row ends."""
    encoded = encode_prompts(tokenizer, prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # as generate sorts
    chunks = [order[i : i + batch] for i in range(0, len(order), batch)]
    return sum(len(c) * max(counts[i] for i in c) for c in chunks)


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# --------------------------------------------------------------------------------------
# measurement and report


def bench(model, tokenizer, prompts, args, label: str) -> tuple[list[str], list[str], bool, list]:
    # untimed warm-up of both paths (oneDNN kernels, allocator)
    run_forgetlab(model, tokenizer, prompts[: args.batch_size], 4, args.batch_size)
    run_one_at_a_time(model, tokenizer, prompts[:1], 4)

    def batched() -> Run:
        return run_forgetlab(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)

    def one_at_a_time() -> Run:
        return run_one_at_a_time(model, tokenizer, prompts, args.max_new_tokens)

    ours, loop = [], []
    for rep in range(args.repeats):
        for runs, fn, name in (
            (ours, batched, "forgetlab"),
            (loop, one_at_a_time, "one-at-a-time"),
        ):
            runs.append(fn())
            r = runs[-1]
            print(
                f"  {label} repeat {rep + 1}/{args.repeats} {name:13s} {r.seconds:7.2f} s "
                f"{r.tokens_per_s:6.1f} new tokens/s (load avg {load_average():.1f})",
                flush=True,
            )
    a, b = ours[0], loop[0]
    same = [x == y for x, y in zip(a.texts, b.texts)]
    slots = batch_slots(tokenizer, prompts, b.counts, args.batch_size)
    lines = [
        row(label, f"forgetlab generate, batch {args.batch_size}", ours),
        row(label, "one prompt at a time", loop),
        f"{label:5s} speed-up batched / one at a time: "
        f"{median_tps(ours) / median_tps(loop):.2f}x (medians); outputs identical: "
        f"{sum(same)}/{len(same)}; new tokens {a.new_tokens} vs {b.new_tokens}; "
        f"batch rows busy {100 * b.new_tokens / slots:.0f}% of decode slots",
    ]
    for i, ok in enumerate(same):
        if not ok:
            at = first_difference(a.texts[i], b.texts[i])
            lines.append(
                f"      question {i}: texts differ from character {at}: "
                f"{a.texts[i][at : at + 40]!r} vs {b.texts[i][at : at + 40]!r}"
            )
    return a.texts, b.texts, all(same) and a.new_tokens == b.new_tokens, lines


def median_tps(runs: list[Run]) -> float:
    return statistics.median(r.tokens_per_s for r in runs)


def row(label: str, name: str, runs: list[Run]) -> str:
    tps = [r.tokens_per_s for r in runs]
    secs = statistics.median(r.seconds for r in runs)
    spread = f"{statistics.median(tps):.1f} [{min(tps):.1f}-{max(tps):.1f}]"
    return f"{label:5s} {name:28s} {runs[0].new_tokens:10d} {secs:9.2f} {spread:>24s}"


HEADER = (
    f"{'':5s} {'setup':28s} {'new tokens':>10s} {'median s':>9s} {'new tokens/s [min-max]':>24s}"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--questions", type=int, default=16, help="first K GSM8K test questions")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8, help="forgetlab's generation batch")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per side (interleaved)")
    p.add_argument("--bf16-weights", action="store_true", help="also time bf16 weights")
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    cfg = ModelConfig(name=MODEL)
    tokenizer = load_tokenizer(cfg)
    model, _ = load_causal_backbone(cfg)
    model.eval()
    prompts = [ex.prompt for ex in load_task("gsm8k_gen").eval[: args.questions]]
    print(machine())
    print(
        f"model: {MODEL} (SmolLM2-135M-Instruct), {cfg.attn_implementation} attention, CPU; "
        f"{len(prompts)} GSM8K test questions in the chat template, greedy, at most "
        f"{args.max_new_tokens} new tokens, KV cache; {args.repeats} repeat(s) interleaved"
    )
    lines, ok = [], True
    fp32_texts = None
    for label, dtype in [("fp32", torch.float32)] + (
        [("bf16", torch.bfloat16)] if args.bf16_weights else []
    ):
        model.to(dtype)
        ours, _, same, block = bench(model, tokenizer, prompts, args, label)
        lines += block
        if dtype == torch.float32:
            ok, fp32_texts = same, ours
        else:
            agree = sum(x == y for x, y in zip(ours, fp32_texts))
            lines.append(f"bf16  batched texts equal to the fp32 ones: {agree}/{len(ours)}")
    print("\n" + HEADER)
    print("\n".join(lines))
    print(f"load avg at the end: {load_average():.2f}")
    if not ok:
        print("\n*** MISMATCH: batched and one-at-a-time greedy outputs differ in fp32 ***")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
