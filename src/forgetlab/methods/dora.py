"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024, "DoRA: Weight-Decomposed
Low-Rank Adaptation", arXiv:2402.09353), through PEFT's `use_dora`.

Each adapted W is split into a magnitude (one scalar per output row, trained) and a direction
(W + s·B·A, renormalised per row; B @ A is the usual LoRA update). The magnitude vector starts
at W's row norms, so the model is unchanged at init. About 14% slower than LoRA per step here.
The checkpoint is a PEFT adapter with the magnitude vectors in it. Its trials stack
(`forgetlab run --stack`): the stacked layer computes each trial's row norms of W + s·B·A.
"""

from __future__ import annotations

from forgetlab.methods.lora import Lora, LoraMethodConfig


class Dora(Lora):
    name = "dora"
    summary = "LoRA on the direction of W plus a trained per-row magnitude (DoRA)"
    reference = "Liu et al. 2024, arXiv:2402.09353"
    config_cls = LoraMethodConfig
    peft_extra = {"use_dora": True}
    # forgetlab.recipe.stacked.layers.StackedDora: each trial's norm and magnitude per block
    stackable = True
