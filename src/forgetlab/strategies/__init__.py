"""Continual-learning strategies, registered by name; combinable with any method and
regulariser (`forgetlab.strategies.base` declares the hooks).

A config names one strategy or a list of them, applied together:

    strategy: {name: replay, examples_per_task: 50, ratio: 0.2}
    strategy: [{name: replay}, {name: lwf, temperature: 2}]

To add one: write `strategies/<name>.py` with a config dataclass (validated in
`__post_init__`) and a `Strategy` subclass, add it to `STRATEGIES` below and a row to the
table in `tests/test_strategies.py`.
"""

from __future__ import annotations

from typing import Any

from forgetlab.config import from_dict, strategy_sections
from forgetlab.errors import ConfigError
from forgetlab.strategies.base import EarlierTask, Strategy, StrategyConfig, StrategyContext
from forgetlab.strategies.lwf import LwF, LwFConfig
from forgetlab.strategies.replay import Replay, ReplayConfig

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (Replay, LwF)}

NONE = "none"


def strategy_configs(value: Any) -> list[StrategyConfig]:
    """Validate a `strategy:` value (a mapping, a list of mappings, or None) with each named
    strategy's config dataclass; errors name the offending key (`strategy.ratio`, ...)."""
    configs: list[StrategyConfig] = []
    for section in strategy_sections(value):
        if not isinstance(section, dict):
            raise ConfigError(f"strategy must be a mapping with a 'name', got {section!r}")
        name = section.get("name")
        if name not in STRATEGIES:
            known = ", ".join([NONE, *sorted(STRATEGIES)])
            raise ConfigError(f"unknown strategy.name={name!r} (known: {known})")
        if any(c.name == name for c in configs):
            raise ConfigError(f"strategy lists {name!r} twice: give each strategy once")
        configs.append(from_dict(STRATEGIES[name].config_cls, section, "strategy"))
    return configs


def build_strategies(value: Any) -> list[Strategy]:
    """The strategies a `strategy:` value asks for, in the order given (empty for none)."""
    return [STRATEGIES[cfg.name](cfg) for cfg in strategy_configs(value)]


__all__ = [
    "STRATEGIES",
    "EarlierTask",
    "LwF",
    "LwFConfig",
    "Replay",
    "ReplayConfig",
    "Strategy",
    "StrategyConfig",
    "StrategyContext",
    "build_strategies",
    "strategy_configs",
]
