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


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: a GPU that supports it, or a CPU with
    AVX512-BF16 or AMX. Elsewhere autocast emulates bf16: on a 2-core AVX2 EPYC a MiniLM
    full-FT epoch ran 12x slower in bf16 than in fp32 (benchmarks/throughput.py, 3.5 vs
    41.0 examples/s), where a CPU with AMX runs it 1.6-1.9x faster."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # torch's own probes of the CPU's instruction sets
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """`training.mixed_precision` as Accelerate takes it: `auto` is bf16 where the device
    computes it natively (`native_bf16`), else no mixed precision (fp32)."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "no"
    return requested
