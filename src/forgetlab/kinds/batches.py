"""Which examples go into which batch: shared by every kind."""

from __future__ import annotations

import random


def length_grouped_batches(
    lengths: list[int], batch_size: int, rng: random.Random, group: bool = True
) -> list[list[int]]:
    """Shuffled batches of similar length (HF's megabatch scheme): shuffle, cut into chunks of
    50 batches, sort each chunk by length, split into batches, shuffle the batch order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group:
        chunk = batch_size * 50
        order = [
            i
            for start in range(0, len(order), chunk)
            for i in sorted(order[start : start + chunk], key=lambda i: -lengths[i])
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group:
        rng.shuffle(batches)
    return batches


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Length-sorted batches: order does not matter for scores, padding does for speed."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class LengthBatches:
    """The batching every kind uses: shuffled, length-grouped batches to train on and
    length-sorted batches to score."""

    train_batches = staticmethod(length_grouped_batches)
    eval_batches = staticmethod(eval_batches)
