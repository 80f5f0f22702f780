"""LoRA with a Gaussian A (PEFT's `init_lora_weights="gaussian"`: A ~ N(0, 1/r²), B = 0).

The "Init[A]" scheme in the notation of Hayou, Ghosh & Yu (2024, "The Impact of
Initialization on LoRA Finetuning Dynamics", arXiv:2406.08447), who show that which factor
starts non-zero changes the finetuning dynamics; LoRA's own default (Hu et al., 2021,
arXiv:2106.09685) is also Init[A], with a Kaiming-uniform A. B = 0 keeps the model unchanged at
init, so the base weights stay untouched and saving is plain LoRA. See `init_ab` for both
factors non-zero.
"""

from __future__ import annotations

from forgetlab.methods.lora import Lora, LoraMethodConfig


class GaussianLora(Lora):
    name = "gaussian"
    summary = "LoRA with A ~ N(0, 1/r^2), B = 0 (PEFT's gaussian init)"
    reference = "Hayou, Ghosh & Yu 2024, arXiv:2406.08447 (Init[A])"
    config_cls = LoraMethodConfig
    stackable = True  # an init or a scaling: the forward is plain LoRA
    peft_extra = {"init_lora_weights": "gaussian"}
