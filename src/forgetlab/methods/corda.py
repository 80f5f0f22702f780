"""CorDA: context-oriented decomposition adaptation (Yang et al., 2024, "CorDA: Context-Oriented
Decomposition Adaptation of Large Language Models for Task-Aware Parameter-Efficient
Fine-tuning", NeurIPS 2024, arXiv:2406.05223), through PEFT's `init_lora_weights="corda"`
(`peft.tuners.lora.corda.preprocess_corda`).

For each targeted W, C = the covariance of its inputs over a little calibration data, and
W·C = U S Vᵀ (SVD of the weight oriented by the context). Knowledge-preserved mode (`kpm`, the
default here, the mode the paper proposes against forgetting): the adapter starts as the r
components with the *smallest* singular values, A = √S_r (V_rᵀ C⁻¹), B = U_r √S_r (divided by
√scale), i.e. the directions the calibration inputs excite least; the frozen base keeps
W − s·B·A, which holds the components those inputs use, so fine-tuning moves W away from them
as little as it can. `corda_method: ipm` (instruction-previewed mode) takes the *largest*
components instead, for faster learning of the calibration task. The model is unchanged at
init but its base weights are rewritten, see `ResidualLora` for how forgetting stays measured
against the pretrained model and how checkpoints become a plain LoRA on the original weights.

Which data: in the paper, KPM's covariance comes from data of the knowledge to preserve (e.g.
question answering) and IPM's from the fine-tuning task. A run here is a task sequence with no
separate "source" data, so the calibration batches come from the first task's training split
unless `calibration_task` names another task of the run. With that default, KPM keeps frozen
what the pretrained model does on the inputs of the task it is about to be tuned on, and trains
in the directions those inputs use least: the conservative choice for measuring forgetting
(it can slow learning of task 1 itself; compare with `corda_method: ipm`). Naming a later task
previews its inputs before training on it: a choice the user makes knowingly.

PEFT's covariance hook expects one example per forward (it squeezes the batch dimension), so
each calibration batch is fed example by example, without its padding.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.methods.base import (
    CalibratedConfig,
    Calibration,
    calibrating,
    missing_peft_feature,
    require_calibration,
)
from forgetlab.methods.lora import (
    LoraMethodConfig,
    ResidualLora,
    check_rank,
    lora_layers,
    targeted_linears,
)
from forgetlab.models.task_model import TaskModel

MODES = ("kpm", "ipm")


@dataclass
class CordaMethodConfig(LoraMethodConfig, CalibratedConfig):
    lora_dropout: float = 0.0  # the adapter holds part of W at init (see pissa.py)
    corda_method: str = "kpm"  # kpm: knowledge-preserved mode; ipm: instruction-previewed

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_calibration()
        if self.corda_method not in MODES:
            raise ConfigError(
                f"method.corda_method={self.corda_method!r} must be one of {', '.join(MODES)}"
            )


def _peft_api():
    try:
        from peft.tuners.lora.config import CordaConfig
        from peft.tuners.lora.corda import preprocess_corda
    except ImportError as e:
        feature = "PEFT's CorDA init (peft.tuners.lora.corda.preprocess_corda)"
        if getattr(e, "name", None) == "attr":
            # PEFT 0.21's corda.py imports `attr` (the attrs package) without depending on it.
            feature += ", whose module imports the `attrs` package: pip install attrs"
        raise missing_peft_feature("corda", feature, e) from e
    return CordaConfig, preprocess_corda


def _one_example_at_a_time(backbone: nn.Module, cal: Calibration) -> None:
    for batch in cal.batches:
        inputs = batch["inputs"]
        mask = inputs["attention_mask"].bool()
        for row in range(mask.shape[0]):
            keep = mask[row]  # drop the padding: it would enter the covariance
            backbone(**{k: v[row : row + 1, keep] for k, v in inputs.items()})


def _check_adapted(backbone: nn.Module, names: list[str]) -> None:
    """PEFT adapted exactly the layers that got a decomposition (a preprocessed layer left
    out would keep its `eigens`, and the init would not be the one asked for)."""
    adapted = {n.removeprefix("base_model.model.") for n in lora_layers(backbone)}
    if adapted != set(names):
        raise ForgetlabError(
            "method corda: PEFT adapted other layers than were preprocessed "
            f"({', '.join(sorted(adapted ^ set(names))[:3])})"
        )


class Corda(ResidualLora):
    name = "corda"
    stackable = True  # an init: the forward is plain LoRA on the residual base
    summary = "LoRA from the context-oriented SVD of W*C (CorDA, knowledge-preserved mode)"
    reference = "Yang et al. 2024, arXiv:2406.05223"
    config_cls = CordaMethodConfig
    needs_calibration = True

    def lora_config(self, cfg: CordaMethodConfig, target_modules: list[str] | None = None):
        from peft import LoraConfig

        CordaConfig, _ = _peft_api()
        kwargs = cfg.peft_kwargs()
        if target_modules is not None:
            kwargs["target_modules"] = target_modules
        corda = CordaConfig(corda_method=cfg.corda_method)
        return LoraConfig(**kwargs, init_lora_weights="corda", corda_config=corda)

    def prepare(
        self,
        model: TaskModel,
        cfg: CordaMethodConfig,
        calibration: Calibration | None = None,
    ) -> None:
        cal = require_calibration(self.name, calibration)
        _, preprocess_corda = _peft_api()
        check_rank(model.backbone, cfg)
        # Exact module names: the same layers get covariances and adapters ("all-linear" is
        # only resolved inside get_peft_model).
        names = sorted(targeted_linears(model.backbone, cfg.target_modules))
        with calibrating(model, cal.device):
            preprocess_corda(  # (leaves the backbone in eval mode: `calibrating` restores it)
                model.backbone,
                self.lora_config(cfg, names),
                run_model=lambda: _one_example_at_a_time(model.backbone, cal),
            )
            super().prepare(model, cfg)  # PEFT's corda_init consumes the decompositions
            _check_adapted(model.backbone, names)

    def save_backbone(self, model: TaskModel, path: Path) -> None:
        with warnings.catch_warnings():
            # The conversion to plain LoRA loads the initial adapter beside the CorDA one (PEFT
            # warns about mixing) with `init_lora_weights: true` (PEFT warns that the
            # corda_config it still carries is ignored): both are what we want.
            warnings.filterwarnings("ignore", "CorDA changes the base weights")
            warnings.filterwarnings("ignore", "`corda_config` specified but will be ignored")
            super().save_backbone(model, path)
