"""OLoRA: orthonormal low-rank adaptation (Büyükakyüz, 2024, "OLoRA: Orthonormal Low-Rank
Adaptation of Large Language Models", arXiv:2406.01775), through PEFT's
`init_lora_weights="olora"`.

W = Q R (QR decomposition); the adapter starts as B = Q[:, :r] (orthonormal columns) and
A = R[:r], and the base layer keeps the residual W − s·B·A, which is frozen. The model is
unchanged at init, but the base weights are rewritten: see `ResidualLora` for how forgetting
stays measured against the pretrained model and how checkpoints become a plain LoRA on the
original weights.

Not O-LoRA (`o_lora`, methods/o_lora.py: one adapter per task, kept orthogonal to the earlier
tasks' adapters); the names differ by one underscore.
"""

from __future__ import annotations

from dataclasses import dataclass

from forgetlab.methods.lora import LoraMethodConfig, ResidualLora


@dataclass
class OloraConfig(LoraMethodConfig):
    lora_dropout: float = 0.0  # the adapter holds part of W (see pissa.py)


class Olora(ResidualLora):
    name = "olora"
    summary = "LoRA initialised from a QR decomposition of W, residual frozen (OLoRA)"
    reference = "Büyükakyüz 2024, arXiv:2406.01775"
    config_cls = OloraConfig
    stackable = True  # an init: the forward is plain LoRA on the residual base
    peft_extra = {"init_lora_weights": "olora"}
