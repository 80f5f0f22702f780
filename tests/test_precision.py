"""`training.mixed_precision: auto` takes bf16 only where the device computes it natively; an
explicit bf16 where it is emulated runs, with a warning that says what it costs."""

from __future__ import annotations

import logging

import pytest
import torch

from forgetlab.config import TrainingConfig
from forgetlab.errors import ConfigError
from forgetlab.models import device as device_module
from forgetlab.models.device import native_bf16, resolve_precision
from forgetlab.recipe import train as train_module
from forgetlab.recipe.train import make_accelerator

CPU = torch.device("cpu")


def _cpu_has(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "auto"),
    [(False, False, "no"), (True, False, "bf16"), (False, True, "bf16"), (True, True, "bf16")],
)
def test_auto_is_bf16_only_on_a_cpu_that_has_it(monkeypatch, avx512_bf16, amx, auto):
    _cpu_has(monkeypatch, avx512_bf16, amx)
    assert native_bf16(CPU) is (avx512_bf16 or amx)
    assert resolve_precision("auto", CPU) == auto
    for explicit in ("no", "bf16", "fp16"):  # what the user wrote is what runs
        assert resolve_precision(explicit, CPU) == explicit


def test_the_accelerator_gets_the_resolved_precision_and_emulated_bf16_is_named(
    monkeypatch, caplog
):
    """What make_accelerator hands to Accelerate (a stand-in: Accelerate keeps one precision
    per process)."""
    asked = []
    monkeypatch.setattr(train_module, "Accelerator", lambda **kw: asked.append(kw) or kw)

    def precision(value: str) -> str:
        make_accelerator(TrainingConfig(mixed_precision=value, device="cpu"))
        return asked[-1]["mixed_precision"]

    _cpu_has(monkeypatch, False, False)
    train_module._warn_emulated_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="forgetlab"):
        assert precision("auto") == "no"
        assert not caplog.records
        assert precision("bf16") == precision("bf16") == "bf16"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "without native bf16" in warnings[0]  # once a process
    _cpu_has(monkeypatch, False, True)
    assert precision("auto") == "bf16"
    train_module._warn_emulated_bf16.cache_clear()


def test_an_unknown_precision_is_refused_naming_auto():
    with pytest.raises(ConfigError, match="not one of no, bf16, fp16, auto"):
        TrainingConfig(mixed_precision="fp8")


def test_probes_missing_from_torch_count_as_no_native_bf16(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert device_module.native_bf16(CPU) is False


def test_one_process_runs_one_precision_after_another(monkeypatch):
    """Accelerate refuses a second precision in a process; forgetlab runs configs one after
    another in one (the API, sweep workers, variants), so each gets its own."""
    first = make_accelerator(TrainingConfig(mixed_precision="no", device="cpu"))
    assert first.mixed_precision == "no"
    second = make_accelerator(TrainingConfig(mixed_precision="bf16", device="cpu"))
    assert second.mixed_precision == "bf16"
    assert (
        make_accelerator(TrainingConfig(mixed_precision="no", device="cpu")).mixed_precision == "no"
    )
    monkeypatch.setenv("WORLD_SIZE", "2")  # a launched process: the launch fixes it
    with pytest.raises(ConfigError, match="already runs no"):
        make_accelerator(TrainingConfig(mixed_precision="bf16", device="cpu"))
