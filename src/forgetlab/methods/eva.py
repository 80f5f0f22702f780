"""EVA: explained variance adaptation (Paischer et al., 2024, "One Initialization to Rule them
All: Fine-tuning via Explained Variance Adaptation", arXiv:2410.07170), through PEFT's
`init_lora_weights="eva"` and `initialize_lora_eva_weights`.

For each targeted layer, an incremental SVD of its inputs (the activations of the calibration
batches, padding excluded) runs batch after batch until the top right-singular vectors stop
moving (cosine similarity >= `tau`); A starts as those vectors, the directions that explain
most of the variance of what the layer sees, and B = 0, so the base weights stay untouched and
the model is unchanged at init (a plain LoRA checkpoint). Ranks are then redistributed: the
budget of r per layer goes to the components with the largest explained-variance ratio over all
layers, each layer capped at round(r·`rho`) (rho = 1: no redistribution); a layer can end up
with rank 0 (no adapter), and with `adjust_scaling_factors` each layer's alpha follows its rank
so that alpha / rank stays lora_alpha / r. The rank pattern is saved in the adapter config, so
`PeftModel.from_pretrained` rebuilds the same layers.

The calibration batches come from the first task's training split unless `calibration_task`
names another task of the run. The SVD is seeded by PEFT and the batches are fixed, so --resume
rebuilds the same ranks and A.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.methods.base import (
    CalibratedConfig,
    Calibration,
    calibrating,
    missing_peft_feature,
    require_calibration,
)
from forgetlab.methods.lora import Lora, LoraMethodConfig, check_rank, targeted_linears
from forgetlab.models.task_model import TaskModel

# EVA cycles over the calibration batches until every layer's components have converged, which
# takes more passes the fewer distinct batches there are (measured on MiniLM, r = 8: 2 batches of
# ~40 tokens needed 94 passes, 4 batches of ~20 tokens 17). A bound turns a loop that does not
# end (tau too close to 1) into an error.
MAX_FORWARDS = 2000


@dataclass
class EvaMethodConfig(LoraMethodConfig, CalibratedConfig):
    rho: float = 2.0  # a layer's rank may grow to round(r*rho); 1.0: no redistribution
    tau: float = 0.99  # convergence: cosine similarity of successive singular vectors
    whiten: bool = False  # divide A's rows by their singular values' square roots
    adjust_scaling_factors: bool = True  # alpha follows the redistributed rank

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_calibration()
        if not self.rho >= 1.0:
            raise ConfigError(f"method.rho={self.rho} must be >= 1 (1: no rank redistribution)")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"method.tau={self.tau} must be in (0, 1]")


def _peft_api():
    try:
        from peft import initialize_lora_eva_weights
        from peft.tuners.lora.config import EvaConfig
    except ImportError as e:
        raise missing_peft_feature(
            "eva", "PEFT's EVA init (EvaConfig, initialize_lora_eva_weights)", e
        ) from e
    return EvaConfig, initialize_lora_eva_weights


def _layer_rows(layer_input, model_input: torch.Tensor, layer_name: str) -> torch.Tensor:
    """The rows of a layer's input that enter the SVD: the non-padding tokens of a (batch, seq,
    features) input (`model_input` holds their indices, PEFT's language-modelling default), or
    every row of a (batch, features) one, such as the pooler's."""
    x = layer_input[0] if isinstance(layer_input, tuple | list) else layer_input
    if x.ndim == 3:
        return x[model_input.T.unbind()]
    return x.reshape(-1, x.shape[-1])


class Eva(Lora):
    name = "eva"
    summary = "LoRA with A from the SVD of the layers' activations, ranks redistributed (EVA)"
    reference = "Paischer et al. 2024, arXiv:2410.07170"
    config_cls = EvaMethodConfig
    needs_calibration = True
    # an init: the forward is plain LoRA. Its ranks follow the seed's calibration batches, so
    # trials of different seeds may not stack (`stack_models` names the layer).
    stackable = True

    def lora_config(self, cfg: EvaMethodConfig):
        from peft import LoraConfig

        EvaConfig, _ = _peft_api()
        eva = EvaConfig(
            rho=cfg.rho,
            tau=cfg.tau,
            whiten=cfg.whiten,
            adjust_scaling_factors=cfg.adjust_scaling_factors,
        )
        return LoraConfig(**cfg.peft_kwargs(), init_lora_weights="eva", eva_config=eva)

    def prepare(
        self,
        model: TaskModel,
        cfg: EvaMethodConfig,
        calibration: Calibration | None = None,
    ) -> None:
        cal = require_calibration(self.name, calibration)
        _, initialize_lora_eva_weights = _peft_api()
        check_rank(model.backbone, cfg)
        cap = round(cfg.r * cfg.rho)
        layers = targeted_linears(model.backbone, cfg.target_modules)
        for layer_name, layer in layers.items():
            if cap > min(layer.in_features, layer.out_features):
                raise ConfigError(
                    f"method.rho={cfg.rho}: EVA computes up to round(r*rho)={cap} components, "
                    f"more than layer {layer_name} ({layer.out_features}x{layer.in_features}) has"
                )
        inputs = [batch["inputs"] for batch in cal.batches]  # EVA's batches carry no labels
        # PEFT skips the SVD step of a batch with fewer rows than components, and loops forever
        # if every batch is that small: refuse upfront. A layer's rows are the batch's tokens,
        # the pooler's (one vector per example) its examples.
        tokens = max(int(batch["attention_mask"].sum()) for batch in inputs)
        examples = max(batch["attention_mask"].shape[0] for batch in inputs)
        pooled = any(n.endswith("pooler.dense") for n in layers)
        if (examples if pooled else tokens) < cap:
            raise ConfigError(
                f"method eva: some layer needs a calibration batch of >= round(r*rho)={cap} "
                f"rows; the largest has {tokens} tokens and {examples} examples "
                "(raise method.calibration_batch_size, or lower method.r or method.rho)"
            )
        calls = 0

        def forward(backbone, batch: dict):
            nonlocal calls
            calls += 1
            if calls > MAX_FORWARDS:
                raise ForgetlabError(
                    f"method eva: the SVD of some layer's inputs did not converge in "
                    f"{MAX_FORWARDS} forward passes over the calibration batches; lower "
                    "method.tau or give more calibration batches"
                )
            return backbone(**batch)

        with calibrating(model, cal.device):
            with warnings.catch_warnings():
                # Only a memory hint: PEFT would build A and B on the meta device first.
                warnings.filterwarnings("ignore", "lora with eva initialization used with low_cpu")
                super().prepare(model, cfg)  # LoRA layers with B = 0
            initialize_lora_eva_weights(
                model.backbone,
                inputs,
                forward_fn=forward,
                prepare_layer_inputs_fn=_layer_rows,
                show_progress_bar=False,
            )
