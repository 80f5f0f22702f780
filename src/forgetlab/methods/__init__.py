"""Adaptation methods, registered by name.

To add a method: write `methods/<name>.py` with a config dataclass and a `Method` subclass,
then add it to `METHODS` below and one row to the table in `tests/test_methods.py`.
"""

from __future__ import annotations

from typing import Any

from forgetlab.config import from_dict
from forgetlab.errors import ConfigError
from forgetlab.methods.adalora import AdaLora
from forgetlab.methods.adapter import Adapter
from forgetlab.methods.base import Calibration, Method, MethodConfig
from forgetlab.methods.corda import Corda
from forgetlab.methods.dora import Dora
from forgetlab.methods.eva import Eva
from forgetlab.methods.freeze import FreezeLowerLayers
from forgetlab.methods.full import FullFineTuning
from forgetlab.methods.gaussian import GaussianLora
from forgetlab.methods.ia3 import Ia3
from forgetlab.methods.init_ab import InitAB
from forgetlab.methods.lora import Lora
from forgetlab.methods.lora_ga import LoraGa
from forgetlab.methods.loraplus import LoraPlus
from forgetlab.methods.milora import Milora
from forgetlab.methods.o_lora import OLora
from forgetlab.methods.olora import Olora
from forgetlab.methods.pissa import Pissa
from forgetlab.methods.prefix import PrefixTuning
from forgetlab.methods.prompt import PromptTuning
from forgetlab.methods.rslora import RsLora
from forgetlab.methods.vera import Vera

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        FullFineTuning(),
        Lora(),
        FreezeLowerLayers(),
        # LoRA variants
        RsLora(),
        Dora(),
        LoraPlus(),
        GaussianLora(),
        InitAB(),
        Pissa(),
        Olora(),
        Milora(),
        Vera(),
        AdaLora(),
        # data-driven inits (get a Calibration from build_model)
        LoraGa(),
        Corda(),
        Eva(),
        # continual learning: one adapter per task
        OLora(),
        # not LoRA: bottleneck adapters (our own module, not PEFT)
        Adapter(),
        # other PEFT families: virtual tokens, rescaling vectors
        PrefixTuning(),
        PromptTuning(),
        Ia3(),
    )
}


def get_method(name: str) -> Method:
    if not isinstance(name, str) or name not in METHODS:  # a list or mapping is unhashable
        raise ConfigError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def method_config(section: dict[str, Any]) -> MethodConfig:
    """Validate the `method:` section with the named method's own config dataclass."""
    method = get_method(section.get("name", ""))
    return from_dict(method.config_cls, section, "method")


__all__ = ["METHODS", "Calibration", "Method", "MethodConfig", "get_method", "method_config"]
