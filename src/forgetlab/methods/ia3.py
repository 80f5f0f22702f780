"""(IA)³ (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper
than In-Context Learning", arXiv:2205.05638), through PEFT's `IA3Config`.

The backbone stays frozen; each targeted layer trains one vector that rescales, elementwise,
its output (attention keys and values) or, for the `feedforward_modules`, its input (the
feed-forward's second layer). The vectors start at 1, so step 0 is the pretrained model.

`target_modules: null` takes PEFT's defaults for the model type (BERT: key, value and
output.dense, which names both the attention's and the feed-forward's output layer, both
scaled on their input; Llama: k_proj, v_proj, down_proj, down_proj scaled on its input) or
forgetlab's for MPNet (`MORE_DEFAULTS`); `feedforward_modules: null` takes the default
feed-forward names that are among the targets. Other model types need `target_modules` set.
Saved and loaded as a PEFT adapter, as LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.methods.base import MethodConfig
from forgetlab.methods.lora import Lora, check_targets
from forgetlab.models.task_model import TaskModel

# Model types PEFT has no (IA)³ defaults for, given the same choice as its BERT one (keys,
# values, the feed-forward's second layer): MPNet (packaged:mpnet) names them attn.k, attn.v
# and output.dense.
MORE_DEFAULTS = {"mpnet": (["k", "v", "output.dense"], ["output.dense"])}


@dataclass
class Ia3MethodConfig(MethodConfig):
    target_modules: list[str] | None = None  # null: PEFT's defaults for the model type
    feedforward_modules: list[str] | None = None  # null: the defaults among the targets

    def __post_init__(self) -> None:
        for key in ("target_modules", "feedforward_modules"):
            if getattr(self, key) == []:
                raise ConfigError(f"method.{key} is empty (null: PEFT's defaults)")
        targets, ff = self.target_modules, self.feedforward_modules
        if targets is not None and ff is not None and not set(ff) <= set(targets):
            raise ConfigError(
                f"method.feedforward_modules={ff} must be among method.target_modules={targets}"
            )


def default_modules() -> dict[str, tuple[list[str], list[str]]]:
    """model type -> (target_modules, feedforward_modules): PEFT's defaults, then ours."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

    defaults = {k: (list(v), list(FF.get(k, []))) for k, v in TARGETS.items()}
    return {**defaults, **MORE_DEFAULTS}


def resolved_modules(backbone: nn.Module, cfg: Ia3MethodConfig) -> tuple[list[str], list[str]]:
    """(target_modules, feedforward_modules) with the per-model-type defaults filled in."""
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    defaults = default_modules()
    targets = cfg.target_modules
    if targets is None:
        if model_type not in defaults:
            import peft

            raise ForgetlabError(
                f"method ia3 does not support model type {model_type!r} without "
                f"method.target_modules: (IA)³ has defaults (PEFT {peft.__version__}'s and "
                f"forgetlab's) only for {', '.join(sorted(defaults))}; set "
                "method.target_modules and method.feedforward_modules"
            )
        targets = defaults[model_type][0]
    ff = cfg.feedforward_modules
    if ff is None:
        ff = [m for m in defaults.get(model_type, ([], []))[1] if m in targets]
    elif not set(ff) <= set(targets):
        raise ConfigError(
            f"method.feedforward_modules={ff} must be among the targets ({', '.join(targets)})"
        )
    return targets, ff


class Ia3(Lora):
    """Reuses LoRA's PEFT-adapter saving and loading; the config and layers differ."""

    name = "ia3"
    summary = "trained vectors rescaling keys, values and feed-forward inputs; init 1 (PEFT)"
    reference = "Liu et al. 2022, arXiv:2205.05638"
    config_cls = Ia3MethodConfig
    stackable = True  # its layers stack in place: forgetlab.recipe.stacked.in_place

    def prepare(self, model: TaskModel, cfg: Ia3MethodConfig) -> None:
        from peft import IA3Config, get_peft_model

        targets, ff = resolved_modules(model.backbone, cfg)
        check_targets(model.backbone, targets)
        config = IA3Config(target_modules=targets, feedforward_modules=ff, init_ia3_weights=True)
        model.backbone = get_peft_model(model.backbone, config)
        for p in model.heads.parameters():
            p.requires_grad_(True)
