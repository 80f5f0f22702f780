"""Where a model runs: a configured device name (`training.device`, `--device`), checked to
exist on this machine before anything loads, so `cuda` without a GPU is refused instead of
quietly running on the CPU under a config that still says cuda."""

from __future__ import annotations

import torch

from forgetlab.errors import ConfigError


def resolve_device(name: str | None, key: str = "training.device") -> torch.device:
    """auto (or None): the GPU when there is one, else the CPU; cpu; cuda or cuda:N, which
    must exist here. `key` names the setting in the message."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{key}={name!r} is not a device: use auto, cpu or cuda") from e
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"{key}={name} but this machine has no usable GPU (torch.cuda.is_available() "
                "is False): use cpu or auto"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{key}={name} but this machine has {count} GPU(s)")
    return device
