"""Prefix tuning (Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
Generation", arXiv:2101.00190), through PEFT's `PrefixTuningConfig`.

The backbone stays frozen; every attention layer gets `num_virtual_tokens` trained key/value
vectors in front of the real tokens' (PEFT feeds them as past key values, so the outputs keep
one position per real token). With `prefix_projection` the prefix is an embedding passed
through a two-layer MLP of width `encoder_hidden_size` (the paper's reparametrisation, for
stabler training); without it the key/value vectors are trained directly. Shared wrapping,
saving and loading: `methods/prompt_learning.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from forgetlab.errors import ConfigError
from forgetlab.methods.prompt_learning import PromptLearning, VirtualTokensConfig


@dataclass
class PrefixMethodConfig(VirtualTokensConfig):
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None  # the MLP's width; null: the model's hidden size

    def __post_init__(self) -> None:
        self.check_virtual_tokens()
        if self.encoder_hidden_size is not None:
            if not self.prefix_projection:
                raise ConfigError(
                    "method.encoder_hidden_size is the width of the prefix MLP: it needs "
                    "method.prefix_projection: true"
                )
            if self.encoder_hidden_size < 1:
                raise ConfigError(
                    f"method.encoder_hidden_size={self.encoder_hidden_size} must be >= 1"
                )


class PrefixTuning(PromptLearning):
    name = "prefix"
    # the prefix encoder (an embedding, with prefix_projection an MLP) runs on every row
    stackable = True
    summary = "trained key/value prefixes in every attention layer; backbone frozen (PEFT)"
    reference = "Li & Liang 2021, arXiv:2101.00190"
    config_cls = PrefixMethodConfig

    def peft_config(self, backbone: nn.Module, cfg: PrefixMethodConfig, decoder: bool):
        from peft import PrefixTuningConfig

        hidden = cfg.encoder_hidden_size or getattr(backbone.config, "hidden_size", None)
        return PrefixTuningConfig(
            task_type="CAUSAL_LM" if decoder else "FEATURE_EXTRACTION",
            num_virtual_tokens=cfg.num_virtual_tokens,
            prefix_projection=cfg.prefix_projection,
            encoder_hidden_size=hidden,
        )
