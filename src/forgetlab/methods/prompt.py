"""Prompt tuning (Lester, Al-Rfou & Constant, 2021, "The Power of Scale for
Parameter-Efficient Prompt Tuning", arXiv:2104.08691), through PEFT's `PromptTuningConfig`.

The backbone stays frozen; `num_virtual_tokens` trained embeddings are prepended to the input
embeddings. They start random (`prompt_tuning_init: random`, PEFT's normal(0, 1)) or as the
word embeddings of `prompt_tuning_init_text`, tokenized by the model's own tokenizer and
repeated or cut to `num_virtual_tokens` (the paper's better-performing init). The outputs'
virtual positions are dropped before the heads and losses see them; shared wrapping, saving
and loading: `methods/prompt_learning.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.methods.prompt_learning import PromptLearning, VirtualTokensConfig

INITS = ("random", "text")


@dataclass
class PromptMethodConfig(VirtualTokensConfig):
    prompt_tuning_init: str = "random"
    prompt_tuning_init_text: str | None = None  # needed by (and only by) init: text

    def __post_init__(self) -> None:
        self.check_virtual_tokens()
        if self.prompt_tuning_init not in INITS:
            raise ConfigError(
                f"method.prompt_tuning_init={self.prompt_tuning_init!r} is not one of "
                f"{', '.join(INITS)}"
            )
        text = self.prompt_tuning_init_text
        if self.prompt_tuning_init == "text" and not (text and text.strip()):
            raise ConfigError(
                "method.prompt_tuning_init_text is needed (non-empty) with prompt_tuning_init: text"
            )
        if self.prompt_tuning_init == "random" and text is not None:
            raise ConfigError(
                "method.prompt_tuning_init_text is used only with prompt_tuning_init: text"
            )


def _tokenizer_folder(backbone: nn.Module) -> str:
    """Where the backbone was loaded from; PEFT reads the init text's tokenizer there."""
    from transformers import AutoTokenizer

    folder = getattr(backbone.config, "_name_or_path", None) or ""
    try:
        AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ForgetlabError(
            f"method prompt: prompt_tuning_init: text needs the model's tokenizer, which "
            f"cannot be loaded from {folder!r} ({type(e).__name__}: {e})"
        ) from e
    return folder


class PromptTuning(PromptLearning):
    name = "prompt"
    # the virtual tokens are an nn.Embedding (stacked), looked up for every row (RowPrompts)
    stackable = True
    summary = "trained soft-prompt embeddings prepended to the input; backbone frozen (PEFT)"
    reference = "Lester et al. 2021, arXiv:2104.08691"
    config_cls = PromptMethodConfig

    def peft_config(self, backbone: nn.Module, cfg: PromptMethodConfig, decoder: bool):
        from peft import PromptTuningConfig

        text = {}
        if cfg.prompt_tuning_init == "text":
            text = {
                "prompt_tuning_init_text": cfg.prompt_tuning_init_text,
                "tokenizer_name_or_path": _tokenizer_folder(backbone),
            }
        return PromptTuningConfig(
            task_type="CAUSAL_LM" if decoder else "FEATURE_EXTRACTION",
            num_virtual_tokens=cfg.num_virtual_tokens,
            prompt_tuning_init=cfg.prompt_tuning_init.upper(),
            **text,
        )
