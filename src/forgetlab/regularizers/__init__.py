"""Regularisers against forgetting, registered by name.

A config section looks like

    regularizer: {name: ewc, lambda: 5000, fisher_samples: 500}

(`lambda` is mapped to the dataclass field `lam`, a Python keyword otherwise). To add one:
write `regularizers/<name>.py` with a config dataclass (validated in `__post_init__`) and a
`Regularizer` subclass, add it to `REGULARIZERS` below and a row to the table in
`tests/test_regularizers.py`.
"""

from __future__ import annotations

import re
from typing import Any

from forgetlab.config import from_dict
from forgetlab.errors import ConfigError
from forgetlab.models.task_model import TaskModel
from forgetlab.regularizers.base import Regularizer, RegularizerConfig, StageContext
from forgetlab.regularizers.ewc import EWC, EWCConfig
from forgetlab.regularizers.l2_init import L2Init, L2InitConfig
from forgetlab.regularizers.laplace import Laplace, LaplaceConfig

REGULARIZERS: dict[str, type[Regularizer]] = {r.name: r for r in (L2Init, EWC, Laplace)}

NONE = "none"


def regularizer_config(section: dict[str, Any]) -> RegularizerConfig:
    """Validate a `regularizer:` section with the named regulariser's config dataclass;
    errors name the offending key (`regularizer.lambda`, `regularizer.curvature`, ...)."""
    if not isinstance(section, dict):
        raise ConfigError(f"regularizer must be a mapping with a 'name', got {section!r}")
    name = section.get("name")
    if not isinstance(name, str) or name not in REGULARIZERS:  # a list is unhashable
        known = ", ".join([NONE, *sorted(REGULARIZERS)])
        raise ConfigError(f"unknown regularizer.name={name!r} (known: {known})")
    data = dict(section)
    if "lam" in data:  # the dataclass field is internal; only the documented key is accepted
        raise ConfigError("unknown key regularizer.lam (the strength is written `lambda`)")
    if "lambda" in data:
        data["lam"] = data.pop("lambda")
    try:
        return from_dict(REGULARIZERS[name].config_cls, data, "regularizer")
    except ConfigError as e:
        # Report the user's key, not the field it maps to.
        raise ConfigError(re.sub(r"\blam\b", "lambda", str(e))) from e


def build_regularizer(
    section: dict[str, Any] | None, model: TaskModel | None = None
) -> Regularizer | None:
    """The regulariser a `regularizer:` section asks for; None for no section or name 'none'.

    With `model`, also checks that the model can be regularised (e.g. `laplace` needs LoRA
    layers) so that a bad combination fails before any training.
    """
    if section is None or (isinstance(section, dict) and section.get("name") == NONE):
        return None
    cfg = regularizer_config(section)
    reg = REGULARIZERS[cfg.name](cfg)
    if model is not None:
        reg.check(model)
    return reg


__all__ = [
    "EWC",
    "REGULARIZERS",
    "EWCConfig",
    "L2Init",
    "L2InitConfig",
    "Laplace",
    "LaplaceConfig",
    "Regularizer",
    "RegularizerConfig",
    "StageContext",
    "build_regularizer",
    "regularizer_config",
]
