"""Partial fine-tuning: freeze the backbone except its last k transformer layers.

A cheap, classic way to forget less: the lower layers, which hold the most general features,
cannot move at all. By default the frozen layers still drop out in training (as they always
did here); `frozen_dropout: false` runs them in eval mode, which makes their output a function
of the example alone, and `cache_frozen: true` then computes it once per example and reuses it
at every epoch, stage and evaluation (`methods/frozen_bottom.py`): the same numbers as
`frozen_dropout: false` without the cache, the frozen layers' compute spent once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from forgetlab.errors import ConfigError
from forgetlab.methods.base import Method, MethodConfig
from forgetlab.methods.frozen_bottom import FrozenBottomCache, frozen_modules, pin_eval
from forgetlab.models.task_model import TaskModel

# Matches the layer index in BERT (encoder.layer.3.), GPT-2 (h.3.), Llama (layers.3.) names.
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


@dataclass
class FreezeConfig(MethodConfig):
    num_trainable_layers: int = 2  # the top k layers train (plus the pooler and the head)
    # true: the frozen layers and embeddings keep their dropout in training (earlier runs);
    # false: they run in eval mode, deterministic: what a cache needs
    frozen_dropout: bool = True
    # encoders: compute the frozen part once per example (needs frozen_dropout: false)
    cache_frozen: bool = False

    def __post_init__(self) -> None:
        if self.num_trainable_layers < 0:
            raise ConfigError(
                f"method.num_trainable_layers={self.num_trainable_layers} must be >= 0"
            )
        if self.cache_frozen and self.frozen_dropout:
            raise ConfigError(
                "method.cache_frozen=true needs method.frozen_dropout=false: a cache is exact "
                "only when the frozen layers are deterministic (no dropout)"
            )


class FreezeLowerLayers(Method):
    name = "freeze"
    summary = "only the last k transformer layers (and the head) train"
    reference = "Lee, Tang & Lin 2019, arXiv:1911.03090"
    config_cls = FreezeConfig
    # its top layers and heads are full fine-tuning's, the frozen bottom is shared; not with
    # cache_frozen (refused in a stack: the cache holds one output per example)
    stackable = True

    def prepare(self, model: TaskModel, cfg: FreezeConfig) -> None:
        indices = {
            int(m.group(1))
            for n, _ in model.backbone.named_parameters()
            if (m := LAYER_INDEX.search(n))
        }
        if not indices:
            raise ConfigError("method freeze: found no numbered transformer layers in the model")
        n_layers = max(indices) + 1
        k = cfg.num_trainable_layers
        if k > n_layers:
            raise ConfigError(
                f"method.num_trainable_layers={k} but the model has {n_layers} layers"
            )
        if cfg.cache_frozen and getattr(model, "is_causal", False):
            raise ConfigError(
                "method.cache_frozen=true works on encoder models only (a decoder's rows are "
                "left-padded for scoring); use method.cache_frozen=false"
            )
        first_trainable = n_layers - k
        for name, p in model.backbone.named_parameters():
            m = LAYER_INDEX.search(name)
            # The pooler sits above the last layer: it trains whenever any layer does.
            above = m is None and "pooler" in name and k > 0
            p.requires_grad_(bool(above or (m and int(m.group(1)) >= first_trainable)))
        for p in model.heads.parameters():
            p.requires_grad_(True)
        if not cfg.frozen_dropout:
            pin_eval(frozen_modules(model.backbone))
        if cfg.cache_frozen:
            # on the instance: checkpoints (state dicts) never see it
            model.backbone.forward = FrozenBottomCache(model.backbone, first_trainable, LAYER_INDEX)
