"""rsLoRA: rank-stabilised LoRA (Kalajdzievski, 2023, "A Rank Stabilization Scaling Factor
for Fine-Tuning with LoRA", arXiv:2312.03732), through PEFT's `use_rslora`.

Plain LoRA scales its update by α/r, which shrinks the update (and its gradients) as r grows,
so higher ranks learn no better. rsLoRA scales by α/√r, the factor under which learning is
stable across ranks. Everything else, saving included, is plain LoRA.
"""

from __future__ import annotations

from forgetlab.methods.lora import Lora, LoraMethodConfig


class RsLora(Lora):
    name = "rslora"
    summary = "LoRA with the rank-stabilised scale alpha/sqrt(r) instead of alpha/r"
    reference = "Kalajdzievski 2023, arXiv:2312.03732"
    config_cls = LoraMethodConfig
    stackable = True  # an init or a scaling: the forward is plain LoRA
    peft_extra = {"use_rslora": True}
