"""Sequence (pair) classification: cross-entropy on the task's head, scored by accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetlab.kinds.base import EvalContext
from forgetlab.kinds.batches import LengthBatches, eval_batches
from forgetlab.metrics import classification_scores, majority_baseline
from forgetlab.tasks.base import ClassificationExample


@dataclass
class EncodedSplit:
    """Token ids without padding; batches are padded to their own longest row."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


def encode(
    examples: list[ClassificationExample],
    tokenizer,
    max_length: int,
    pair_encoding: str,
    **_options,  # other kinds' encoding options (e.g. long_prompts)
) -> EncodedSplit:
    first = [ex.text for ex in examples]
    second = [ex.text_pair for ex in examples]
    if all(s is None for s in second):
        enc = tokenizer(first, truncation=True, max_length=max_length)
    elif pair_encoding == "concat":  # one string, as the reference study did
        joined = [a if b is None else f"{a} {b}" for a, b in zip(first, second)]
        enc = tokenizer(joined, truncation=True, max_length=max_length)
    else:  # [CLS] a [SEP] b [SEP]
        enc = tokenizer(first, [s or "" for s in second], truncation=True, max_length=max_length)
    return EncodedSplit(
        input_ids=enc["input_ids"],
        token_type_ids=enc.get("token_type_ids"),
        labels=[ex.label for ex in examples],
    )


def collate(split: EncodedSplit, indices: list[int], pad_id: int, device) -> dict:
    width = max(len(split.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    types = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(split.input_ids[i])
        ids[row, :n] = torch.tensor(split.input_ids[i])
        mask[row, :n] = 1
        if split.token_type_ids is not None:
            types[row, :n] = torch.tensor(split.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask}
    if split.token_type_ids is not None:
        batch["token_type_ids"] = types
    labels = torch.tensor([split.labels[i] for i in indices], dtype=torch.long)
    return {"inputs": {k: v.to(device) for k, v in batch.items()}, "labels": labels.to(device)}


def loss(model, task: str, batch: dict) -> torch.Tensor:
    logits = model(task, **batch["inputs"])
    return F.cross_entropy(logits.float(), batch["labels"])


def loss_units(split: EncodedSplit, indices: list[int]) -> int:
    """The loss is a mean over examples."""
    return len(indices)


def predict(model, task: str, batch: dict) -> torch.Tensor:
    return model(task, **batch["inputs"]).argmax(-1)


@torch.no_grad()
def evaluate(model, task: str, data: EncodedSplit, ctx: EvalContext) -> dict:
    """Accuracy (the score) and the task's extra metrics (MCC, F1) on its eval split."""
    was_training = model.training
    model.to(ctx.device).eval()
    mine: dict[int, int] = {}
    try:
        for indices in ctx.shards.own(eval_batches(data.lengths, ctx.batch_size)):
            batch = collate(data, indices, ctx.pad_id, ctx.device)
            with ctx.autocast():
                mine.update(zip(indices, predict(model, task, batch).tolist()))
    finally:
        model.train(was_training)
    joined = ctx.shards.join(mine)
    preds = [joined[i] for i in range(len(data))]
    scores = classification_scores(preds, data.labels, ctx.extra_metrics)
    return {"score": scores["accuracy"], "metric": "accuracy", **scores, "n": len(data)}


def majority(data: EncodedSplit) -> float:
    """Accuracy of always predicting the eval split's most common label."""
    return majority_baseline(data.labels)


class Classification(LengthBatches):
    """The kind's functions as one object (`TaskKind`); `predict` is its own extra."""

    name = "classification"
    trainable = True
    packs = False
    from_files = True
    encode = staticmethod(encode)
    evaluate = staticmethod(evaluate)
    baseline = staticmethod(majority)
    collate = staticmethod(collate)
    loss = staticmethod(loss)
    loss_units = staticmethod(loss_units)
    predict = staticmethod(predict)


CLASSIFICATION = Classification()
